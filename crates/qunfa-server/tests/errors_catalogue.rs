//! `docs/errors.md` lists every code with its status, messages and hint. This
//! test fails when the file and the code disagree; run it with
//! `UPDATE_EXPECT=1` to rewrite the file.

use qunfa_core::Code;

fn catalogue() -> String {
    let mut out = String::from(
        "# Error and verdict codes\n\n\
         Every API error and every preflight verdict carries one of these codes. Codes never\n\
         change once published. Errors come as `{\"error\": {\"code\", \"message\", \"message_zh\", \"hint\", \"details\"}}`;\n\
         verdicts (from `POST /v1/broadcasts/{id}/preflight`, and in the details of a refused send) carry the same\n\
         code with a severity (`block`, `review`, `delay`, `warn`) and, where the cause clears by itself, `clears_at`.\n\n\
         This file is generated from `crates/qunfa-core/src/codes.rs` by `UPDATE_EXPECT=1 cargo test -p qunfa-server --test errors_catalogue`.\n\n\
         | code | HTTP | message | 中文 | how to fix |\n| --- | --- | --- | --- | --- |\n",
    );
    for code in Code::ALL {
        let status = qunfa_server::error::status_of(*code).as_u16();
        out.push_str(&format!(
            "| `{}` | {status} | {} | {} | {} |\n",
            code.as_str(),
            code.message_en(),
            code.message_zh(),
            code.hint().replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn every_code_is_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/errors.md");
    let expected = catalogue();
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    for code in Code::ALL {
        assert!(actual.contains(&format!("`{}`", code.as_str())), "{} is missing from docs/errors.md", code.as_str());
    }
    assert!(
        actual == expected,
        "docs/errors.md is stale: run UPDATE_EXPECT=1 cargo test -p qunfa-server --test errors_catalogue"
    );
}
