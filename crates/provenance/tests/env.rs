//! The environment variables behind the flags (one test in its own binary:
//! it sets process environment).

use anyaccel_provenance::{C2paArgs, C2paMode};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    c2pa: C2paArgs,
}

#[test]
fn env_vars_set_every_flag_and_flags_win() {
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("ANYACCEL_C2PA", "off");
        std::env::set_var("ANYACCEL_C2PA_CERT", "/etc/anyaccel/chain.pem");
        std::env::set_var("ANYACCEL_C2PA_KEY", "/etc/anyaccel/key.pem");
        std::env::set_var("ANYACCEL_C2PA_INCLUDE_PROMPT", "true");
    }
    let cli = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(cli.c2pa.c2pa, C2paMode::Off);
    assert_eq!(
        cli.c2pa.c2pa_cert,
        Some(PathBuf::from("/etc/anyaccel/chain.pem"))
    );
    assert_eq!(
        cli.c2pa.c2pa_key,
        Some(PathBuf::from("/etc/anyaccel/key.pem"))
    );
    assert!(cli.c2pa.c2pa_include_prompt);

    let cli = Cli::try_parse_from(["x", "--c2pa", "on"]).unwrap();
    assert_eq!(cli.c2pa.c2pa, C2paMode::On);

    for (value, want) in [
        ("1", true),
        ("yes", true),
        ("0", false),
        ("false", false),
        ("off", false),
    ] {
        // SAFETY: as above.
        unsafe { std::env::set_var("ANYACCEL_C2PA_INCLUDE_PROMPT", value) };
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(
            cli.c2pa.c2pa_include_prompt, want,
            "ANYACCEL_C2PA_INCLUDE_PROMPT={value}"
        );
    }
    // SAFETY: as above.
    unsafe { std::env::set_var("ANYACCEL_C2PA", "sometimes") };
    assert!(Cli::try_parse_from(["x"]).is_err());
}
