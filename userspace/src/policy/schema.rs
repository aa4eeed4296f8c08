//! The policy document as serde types: its keys and shapes, for front ends other
//! than the YAML one (a JSON file, a policy embedded in a custom resource, a tool
//! writing policies). Unknown keys are refused here as the YAML front end refuses
//! them. Values stay text (`Scalar`): what a value may be (a CIDR without host
//! bits, a known set, a port range) is judged once, by the validation every front
//! end shares (validate.rs), which also gives each problem its line and column.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A whole policy (`version: 1`, docs/policy.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub version: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets: Option<BTreeMap<String, SetDefinition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleDefinition>>,
}

/// A set under `sets:`: a list of CIDRs, or a mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SetDefinition {
    Cidrs(Vec<Scalar>),
    Spec(Box<SetSpec>),
}

/// A set written as a mapping: CIDRs, holes, a `file:` import, or a provider's list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidrs: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<OneOrMany>,
}

/// One rule under `rules:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDefinition {
    pub name: Scalar,
    pub ports: Vec<Scalar>,
    pub from: Vec<Scalar>,
}

/// A provider filter: one name or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

/// A value as written: YAML's scalars are text, and JSON's numbers and booleans
/// are taken as the text they spell (`"version": 1` is `version: 1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl Scalar {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Self {
        Scalar(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A list or a mapping, told apart by shape, so that an error inside either names
/// its own field (an untagged enum would only say "no variant matched").
impl<'de> Deserialize<'de> for SetDefinition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = SetDefinition;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of CIDRs or a mapping with cidrs/except/file/max_size or provider/snapshot")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SetDefinition, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(SetDefinition::Cidrs)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SetDefinition, A::Error> {
                SetSpec::deserialize(MapAccessDeserializer::new(map))
                    .map(|spec| SetDefinition::Spec(Box::new(spec)))
            }
        }
        deserializer.deserialize_any(SetVisitor)
    }
}

/// A name or a list, told apart by shape.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OneOrMany, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar(v.to_string())))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}
