//! `cargo xtask demo`: Airlock's main job, end to end, in two throwaway network
//! namespaces. Applies the built-in Airbyte policy plus a documentation-range
//! "office" set to a database port, opens real TCP connections from allowed and
//! refused sources, shows who got in, the counters, and cleans up.

use std::{process::ExitCode, time::Duration};

use airlock_integration::{
    cli::airlock_in,
    netns::{Server, Testbed, addr, require_root},
};

const POSTGRES: u16 = 5432;
const OTHER_PORT: u16 = 8080;

fn policy(iface: &str) -> String {
    format!(
        r#"# Demo policy: Postgres only from Airbyte Cloud (both regions) and the office.
version: 1
interfaces: [{iface}]
mode: enforce
default: pass            # ports no rule covers stay open
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
    let text = policy(&bed.server_if);
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
    println!("{:<32} {:<18} {:>6}  result", "who", "source", "port");
    let mut surprises = 0;
    for (who, source, port, expected) in attempts {
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
    println!("(Airbyte Cloud's own addresses are in the policy but are not documentation");
    println!(
        " addresses, so the demo sends no traffic from them; the kernel tests do, as synthetic packets.)\n"
    );

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
