//! `cargo xtask demo`: Airlock's main job, end to end, in two throwaway network
//! namespaces. Applies the built-in Airbyte policy plus a documentation-range
//! "office" set to a database port, opens real TCP connections from allowed and
//! refused sources, shows who got in; then swaps in `default: drop` in place and
//! shows that the host's own outgoing connections still get their replies while
//! the other port closes; prints the counters, and cleans up.

use std::{process::ExitCode, time::Duration};

use airlock_integration::{
    cli::airlock_in,
    netns::{Server, Testbed, addr, require_root},
};

const POSTGRES: u16 = 5432;
const OTHER_PORT: u16 = 8080;
/// A service on the client side that the server itself connects to.
const PEER_PORT: u16 = 9000;

fn policy(iface: &str, default: &str) -> String {
    let comment = if default == "pass" {
        "ports no rule covers stay open"
    } else {
        "everything else closed; replies to the host's own connections still pass"
    };
    format!(
        r#"# Demo policy: Postgres only from Airbyte Cloud (both regions) and the office.
version: 1
interfaces: [{iface}]
mode: enforce
default: {default}            # {comment}
sets:
  office: [198.51.100.0/24, "2001:db8:100::/48"]
rules:
  - name: airbyte-to-postgres
    ports: [{POSTGRES}/tcp]
    from: [airbyte-us, airbyte-eu, office]
"#
    )
}

fn main() -> ExitCode {
    require_root();
    println!("== Airlock demo: two throwaway network namespaces joined by a veth pair ==");
    let bed = Testbed::new("demo");
    let workdir = tempfile::tempdir().expect("temp dir");
    let policy_path = workdir.path().join("policy.yaml");
    let text = policy(&bed.server_if, "pass");
    std::fs::write(&policy_path, &text).expect("write policy");
    println!(
        "\nserver namespace {} (interface {}), client namespace {}",
        bed.server.name(),
        bed.server_if,
        bed.client.name()
    );
    println!("\npolicy ({}):\n{text}", policy_path.display());

    let _postgres = Server::start(&bed.server, POSTGRES);
    let _other = Server::start(&bed.server, OTHER_PORT);
    let _peer_service = Server::start(&bed.client, PEER_PORT);

    let pin_root = bed.bpffs.path();
    let policy_arg = policy_path.to_str().expect("utf-8 path");
    let applied = airlock_in(&bed.server, pin_root, &["apply", "-f", policy_arg]);
    print!("$ airlock apply -f policy.yaml\n{}", applied.stdout);
    if applied.code != 0 {
        eprintln!("apply failed ({}):\n{}", applied.code, applied.stderr);
        return ExitCode::FAILURE;
    }
    println!("(airlock has exited; the filter stays pinned in the kernel and keeps enforcing)\n");

    let attempts = [
        ("office", addr::OFFICE_V4, POSTGRES, true),
        ("office", addr::OFFICE_V6, POSTGRES, true),
        ("stranger", addr::STRANGER_V4, POSTGRES, false),
        ("stranger", addr::STRANGER_V6, POSTGRES, false),
        ("partner (in no set)", addr::PARTNER_V4, POSTGRES, false),
        (
            "stranger, port no rule covers",
            addr::STRANGER_V4,
            OTHER_PORT,
            true,
        ),
    ];
    let mut surprises = try_all(&bed, &attempts);
    println!("(Airbyte Cloud's own addresses are in the policy but are not documentation");
    println!(
        " addresses, so the demo sends no traffic from them; the kernel tests do, as synthetic packets.)\n"
    );

    // Act two: close everything else, in place (one atomic swap, no detach).
    let text = policy(&bed.server_if, "drop");
    std::fs::write(&policy_path, &text).expect("write policy");
    println!("now with `default: drop`:\n$ airlock apply -f policy.yaml");
    let applied = airlock_in(&bed.server, pin_root, &["apply", "-f", policy_arg]);
    print!("{}", applied.stdout);
    if applied.code != 0 {
        eprintln!("apply failed ({}):\n{}", applied.code, applied.stderr);
        return ExitCode::FAILURE;
    }
    surprises += try_all(
        &bed,
        &[
            ("office", addr::OFFICE_V4, POSTGRES, true),
            (
                "stranger, port no rule covers",
                addr::STRANGER_V4,
                OTHER_PORT,
                false,
            ),
        ],
    );
    for peer in [addr::STRANGER_V4, addr::STRANGER_V6] {
        let replied = bed
            .connects_out(peer, PEER_PORT, Duration::from_secs(2))
            .is_ok();
        println!(
            "the server itself connects to {peer} port {PEER_PORT}: {}",
            if replied {
                "reply got back in (return traffic)"
            } else {
                "reply dropped   <-- unexpected!"
            }
        );
        surprises += usize::from(!replied);
    }
    println!();

    let status = airlock_in(&bed.server, pin_root, &["status"]);
    print!("$ airlock status\n{}", status.stdout);
    let removed = airlock_in(&bed.server, pin_root, &["remove", "--all"]);
    print!("\n$ airlock remove --all\n{}", removed.stdout);
    let back = bed.connects(addr::STRANGER_V4, POSTGRES, Duration::from_secs(2));
    println!(
        "stranger to {POSTGRES} after remove: {}",
        if back {
            "GOT IN (filter gone)"
        } else {
            "still kept out?!"
        }
    );
    surprises += usize::from(!back);
    println!("\ncleaning up namespaces and bpffs");
    if surprises == 0 && status.code == 0 && removed.code == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("demo saw {surprises} unexpected result(s)");
        ExitCode::FAILURE
    }
}

/// Tries each (who, source, port, expected) connection into the server and prints
/// a row; returns how many got a verdict other than expected.
fn try_all(bed: &Testbed, attempts: &[(&str, &str, u16, bool)]) -> usize {
    println!("{:<32} {:<18} {:>6}  result", "who", "source", "port");
    let mut surprises = 0;
    for &(who, source, port, expected) in attempts {
        let timeout = Duration::from_millis(if expected { 2000 } else { 500 });
        let got_in = bed.connects(source, port, timeout);
        let result = if got_in {
            "GOT IN"
        } else {
            "kept out (SYN dropped by XDP)"
        };
        let flag = if got_in == expected {
            ""
        } else {
            "   <-- unexpected!"
        };
        surprises += usize::from(got_in != expected);
        println!("{who:<32} {source:<18} {port:>6}  {result}{flag}");
    }
    surprises
}
