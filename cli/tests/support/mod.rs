//! What the `eda` command's test files share: running the built binary without the caller's
//! `EDA_*` variables, and the shop example binaries, built once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The shop demo's services.
pub const SHOP: [&str; 4] = [
    "shop_orders",
    "shop_billing",
    "shop_notifications",
    "shop_analytics",
];

/// The built `eda` binary with `args`, without any `EDA_*` variable of the caller, no colours,
/// nothing on stdin.
pub fn eda_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eda"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EDA_") {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1").args(args).stdin(Stdio::null());
    command
}

/// The workspace root.
pub fn root() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    cli.parent().unwrap_or(cli).to_path_buf()
}

/// Where cargo builds.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The four shop example binaries, built once.
pub fn shop() -> &'static [String] {
    static BUILT: OnceLock<Vec<String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.current_dir(root()).args(["build", "--quiet"]);
        for example in SHOP {
            command.args(["--example", example]);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "cargo build of the shop examples");
        SHOP.iter()
            .map(|example| {
                let binary = target_dir().join("debug/examples").join(example);
                assert!(binary.is_file(), "{}", binary.display());
                binary.to_string_lossy().into_owned()
            })
            .collect()
    })
}

/// The `shop_billing` example binary.
pub fn shop_billing() -> &'static str {
    &shop()[1]
}
