//! The chart's CRD file is exactly what the types generate: a field added to a type
//! without `cargo xtask crds` fails here.

use std::path::Path;

#[test]
fn chart_crds_match_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(airlock_crds::CHART_CRD_PATH);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask crds`", path.display()));
    let generated = airlock_crds::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "{} differs from the CRDs generated from crds/src/: run `cargo xtask crds`",
        path.display()
    );
}

#[test]
fn every_kind_is_cluster_scoped_with_printer_columns() {
    for crd in airlock_crds::crds() {
        assert_eq!(crd.spec.scope, "Cluster", "{}", crd.spec.names.kind);
        assert_eq!(crd.spec.group, airlock_crds::GROUP);
        let version = &crd.spec.versions[0];
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty()),
            "{} has no printer columns",
            crd.spec.names.kind
        );
    }
}

#[test]
fn revisions_and_shards_are_immutable_in_the_schema() {
    let yaml = airlock_crds::crd_yaml().unwrap();
    for kind in ["AirlockPolicyRevision", "AirlockSourceShard"] {
        let crd = airlock_crds::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let rules = &schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"];
        assert_eq!(rules[0]["rule"], "self == oldSelf", "{kind}: {rules}");
    }
    assert!(yaml.contains("maxLength: 524288"));
}
