//! The datapath's debug and trace lines (aya-log): a malformed frame produces its
//! debug line when logging is on, and nothing at all when it is off (the default).
//! The real program, BPF_PROG_TEST_RUN, the lines read from its ring buffer by
//! `aya_log::EbpfLogger` as the agent and `airlock watch` read them.
//!
//! Needs root; fails (never skips) without it.

use std::sync::{Arc, Mutex};

use airlock_common::Reason;
use airlock_integration::kernel::{Harness, XDP_DROP, action_name};
use airlock_integration::packet::FrameSpec;
use aya_log::EbpfLogger;

const POLICY: &str = r#"
version: 1
interfaces: [eth0]
default: drop
sets:
  office: [198.51.100.0/24]
rules:
  - name: pg
    ports: [5432/tcp]
    from: [office]
"#;

/// Keeps every record aya-log hands it, as "LEVEL message".
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// Runs a TCP frame from 198.51.100.9 cut inside its TCP header, then a sound one
/// the rule allows, with logging at `level`; returns the lines read back.
fn lines_at(level: u8) -> Vec<String> {
    let mut h = Harness::with_datapath_log(level);
    h.apply(POLICY);
    let capture = Capture::default();
    let mut logger = EbpfLogger::init_with_logger(&mut h.filter.ebpf, capture.clone())
        .unwrap_or_else(|e| panic!("no aya-log ring buffer in the object: {e:?}"));
    let cut = FrameSpec::tcp("198.51.100.9", 5432)
        .truncate(14 + 20 + 10)
        .build();
    let outcome = h.check(&cut);
    assert_eq!(
        (action_name(outcome.action), outcome.reason),
        (action_name(XDP_DROP), Reason::Malformed),
        "logging must not change the verdict"
    );
    let sound = FrameSpec::tcp("198.51.100.9", 5432).build();
    assert_eq!(h.check(&sound).reason, Reason::RuleAllowed);
    logger.flush();
    capture.0.lock().unwrap().clone()
}

#[test]
fn malformed_frame_logs_its_debug_line_when_on() {
    let lines = lines_at(aya_log::Level::Debug as u8);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("DEBUG malformed frame (44 bytes) from 198.51.100.9:")),
        "no debug line for the malformed frame; got {lines:#?}"
    );
    // Debug, not trace: the rule decision's trace line is not there.
    assert!(
        !lines.iter().any(|l| l.starts_with("TRACE")),
        "trace lines at debug level: {lines:#?}"
    );
}

#[test]
fn trace_names_the_entries_that_decided() {
    let lines = lines_at(aya_log::Level::Trace as u8);
    let allowed = Reason::RuleAllowed as u32;
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "TRACE verdict reason {allowed} rule 0: source entry rules 1 flags 0, port entry rules 1"
        ))),
        "no trace line for the rule decision; got {lines:#?}"
    );
}

#[test]
fn nothing_is_logged_when_off() {
    let lines = lines_at(0);
    assert!(lines.is_empty(), "logging is off, yet: {lines:#?}");
}
