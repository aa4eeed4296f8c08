//! Why a packet got its verdict. The numbers index `REASON_STATS` and are a stable
//! ABI: append only, never renumber; a retired reason keeps its slot.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    NonIp = 0,
    /// Source in `management`: passed.
    Management = 1,
    /// Source in `deny`: dropped.
    Deny = 2,
    /// Neighbour discovery, router advertisement, packet-too-big and other ICMP errors: passed.
    EssentialIcmp = 3,
    /// A rule covers the port and lists the source: passed.
    RuleAllowed = 4,
    /// Rules cover the port but none lists the source: dropped.
    RuleRefused = 5,
    /// No rule covers the port, `default: pass`.
    DefaultPass = 6,
    /// No rule covers the port, `default: drop`.
    DefaultDrop = 7,
    /// A non-first fragment (it carries no ports) from a source some rule lists, or
    /// with `default: pass`: passed.
    FragmentPass = 8,
    /// A non-first fragment from a source no rule lists under `default: drop`: dropped.
    FragmentDrop = 9,
    /// Truncated or malformed headers: dropped.
    Malformed = 10,
    /// No complete policy is loaded (never seen after a successful apply): passed.
    NoPolicy = 11,
    /// No rule covers the port, `default: drop`, but the packet answers a flow the
    /// host itself opened (seen leaving through the egress program): passed.
    ReturnTraffic = 12,
}

pub const REASON_COUNT: u32 = 13;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NonIp,
        Reason::Management,
        Reason::Deny,
        Reason::EssentialIcmp,
        Reason::RuleAllowed,
        Reason::RuleRefused,
        Reason::DefaultPass,
        Reason::DefaultDrop,
        Reason::FragmentPass,
        Reason::FragmentDrop,
        Reason::Malformed,
        Reason::NoPolicy,
        Reason::ReturnTraffic,
    ];

    /// The reason with this number, if any.
    pub const fn from_number(number: u32) -> Option<Reason> {
        if number < REASON_COUNT {
            Some(Self::ALL[number as usize])
        } else {
            None
        }
    }

    /// Whether the policy says to pass (before monitor mode is applied).
    pub const fn passes(self) -> bool {
        !matches!(
            self,
            Reason::Deny
                | Reason::RuleRefused
                | Reason::DefaultDrop
                | Reason::FragmentDrop
                | Reason::Malformed
        )
    }

    /// Short stable name used in CLI output, JSON and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NonIp => "non_ip",
            Reason::Management => "management",
            Reason::Deny => "deny",
            Reason::EssentialIcmp => "essential_icmp",
            Reason::RuleAllowed => "rule_allowed",
            Reason::RuleRefused => "rule_refused",
            Reason::DefaultPass => "default_pass",
            Reason::DefaultDrop => "default_drop",
            Reason::FragmentPass => "fragment_pass",
            Reason::FragmentDrop => "fragment_drop",
            Reason::Malformed => "malformed",
            Reason::NoPolicy => "no_policy",
            Reason::ReturnTraffic => "return_traffic",
        }
    }
}
