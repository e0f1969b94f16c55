//! The shape of the code, checked: no import circle among `src/` modules and no route module
//! importing another (scripts/module-graph.py computes both from the `crate::` references).

use std::process::Command;

#[test]
fn src_modules_form_no_circle_and_routes_import_no_route() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/module-graph.py");
    let out = Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 runs scripts/module-graph.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "module graph:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
