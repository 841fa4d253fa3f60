//! `[[allow.body]]` from the command line: `explain --body @FILE` decides a request body the way
//! the broker does.

use std::process::Command;

use wgbroker::keys::PrivateKey;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

#[test]
fn explain_checks_a_body_file_against_the_rules_body_constraints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wg = WireguardToml::new(&PrivateKey::generate().expect("rng"), "10.77.0.2")
        .peer(PeerToml::new(
            PrivateKey::generate().expect("rng").public_key(),
            "127.0.0.1:9",
            "10.77.0.1/32",
        ))
        .render();
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        format!(
            "{wg}\n[[allow]]\nurl = \"https://ghe.example.com/api/v3/repos/:o/:r/git/trees\"\n\
             methods = [\"POST\"]\n[[allow.body]]\npointer = \"/tree/*/path\"\n\
             glob = [\"**/package.json\"]\n"
        ),
    )
    .expect("write");
    let explain = |body: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgbroker"));
        cmd.args(["explain", "-c"]).arg(&config).args([
            "POST",
            "https://ghe.example.com/api/v3/repos/acme/app/git/trees",
        ]);
        if let Some(b) = body {
            let file = dir.path().join("body.json");
            std::fs::write(&file, b).expect("write");
            cmd.arg("--body").arg(format!("@{}", file.display()));
        }
        let out = cmd.output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(Some(r#"{"tree":[{"path":"web/package.json"}]}"#));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("every [[allow.body]] constraint holds"),
        "{out}"
    );
    let (code, out) = explain(Some(r#"{"tree":[{"path":"deploy.sh"}]}"#));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("body: DENIED body[0]"), "{out}");
    assert!(!out.contains("deploy.sh"), "no body text: {out}");
    let (code, out) = explain(None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("pass --body @FILE"), "{out}");
}
