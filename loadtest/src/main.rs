//! `locus-loadtest`: load and fault-injection driver with a report. Built in the loadtest
//! issue; until then this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("loadtest: not built yet (see the loadtest issue); nothing to run");
    std::process::ExitCode::from(2)
}
