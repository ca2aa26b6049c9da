//! `locus-edge`: the edge server. It keeps a websocket to the locator (register, report
//! load, relay audit entries from a durable spool), hosts the users' sessions and drains
//! on SIGTERM. Built in the edge issue; until then this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("edge: not built yet (see the edge issue); nothing to run");
    std::process::ExitCode::from(2)
}
