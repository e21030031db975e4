//! A real GnuPG on the customer's side, for the OpenPGP contract tests, the
//! end-to-end tests and the mail benchmark: one throw-away home per
//! [`Gpg`], `/usr/bin/gpg` run unattended. Not part of kci's own work;
//! compiled in so tests and benchmarks share one helper.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GPG: &str = "/usr/bin/gpg";

/// What one gpg run said.
pub struct Output {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One GnuPG home, removed (and its agent stopped) when dropped.
pub struct Gpg {
    home: PathBuf,
}

impl Default for Gpg {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpg {
    /// A new, empty home. Panics if gpg is not installed: the tests that
    /// use it must fail, never skip, without it.
    pub fn new() -> Gpg {
        assert!(
            Path::new(GPG).exists(),
            "{GPG} is required (apt-get install gnupg)"
        );
        use rand::Rng;
        let name = format!("kci-gpg-{:016x}", rand::rng().random::<u64>());
        let home = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&home).expect("a GnuPG home");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700));
        }
        Gpg { home }
    }

    /// A file in the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.home.join(name)
    }

    /// Runs gpg with `args`, `stdin` piped in.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = Command::new(GPG)
            .env("GNUPGHOME", &self.home)
            .args([
                "--batch",
                "--yes",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            input.write_all(data).expect("write to gpg");
        }
        drop(input);
        let out = child.wait_with_output().expect("gpg finishes");
        Output {
            ok: out.status.success(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs gpg, which must succeed; its output. A run that failed only
    /// because gpg could not reach the agent it starts for the home (on a
    /// loaded machine the agent can be slow to come up) is run again, up
    /// to three times.
    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let mut out = self.run(args, stdin);
        for _ in 0..3 {
            let agent = out.stderr.contains("agent") || out.stderr.contains("IPC");
            if out.ok || !agent {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            out = self.run(args, stdin);
        }
        assert!(out.ok, "gpg {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// The fingerprint of the first key for `uid`.
    pub fn fingerprint(&self, uid: &str) -> String {
        let out = self.ok(&["--with-colons", "--list-keys", uid], None);
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .map(|l| l.trim_end_matches(':').to_string())
            .expect("a fingerprint")
    }

    /// A key for `uid`: an `rsa3072` or `ed25519` primary (sign, certify),
    /// and when `encrypt` an encryption subkey (`cv25519` beside ed25519,
    /// else the same algorithm), valid for `expire`; its fingerprint.
    pub fn generate(&self, uid: &str, algo: &str, encrypt: bool, expire: &str) -> String {
        self.generate_at(uid, algo, encrypt, expire, None)
    }

    /// Like [`Gpg::generate`], made at `at` (gpg's `--faked-system-time`,
    /// e.g. `20261201T100000`), so it can sign as of any time since.
    pub fn generate_at(
        &self,
        uid: &str,
        algo: &str,
        encrypt: bool,
        expire: &str,
        at: Option<&str>,
    ) -> String {
        // The clock frozen at `at` ("!"): a running one made the primary
        // key a second after `at` on a busy machine, and the subkey, made
        // by a second gpg again at `at`, then came before it ("Time
        // conflict").
        let frozen = at.map(|t| format!("{}!", t.trim_end_matches('!')));
        let faked: Vec<&str> = frozen
            .as_deref()
            .map(|t| vec!["--faked-system-time", t])
            .unwrap_or_default();
        let mut gen_key = faked.clone();
        gen_key.extend(["--quick-gen-key", uid, algo, "sign,cert", expire]);
        self.ok(&gen_key, None);
        let fpr = self.fingerprint(uid);
        if encrypt {
            let sub = if algo == "ed25519" { "cv25519" } else { algo };
            let mut add_key = faked;
            add_key.extend(["--quick-add-key", &fpr, sub, "encr", expire]);
            self.ok(&add_key, None);
        }
        fpr
    }

    /// The public key of `who` (a fingerprint or user ID), armored.
    pub fn export(&self, who: &str) -> String {
        String::from_utf8(self.ok(&["--armor", "--export", who], None)).expect("armor is text")
    }

    pub fn import(&self, data: &[u8]) {
        self.ok(&["--import"], Some(data));
    }

    /// Decrypts the PGP/MIME mail `raw`: the inner text and gpg's status
    /// lines (`DECRYPTION_OKAY`, `GOODSIG` when it could).
    pub fn decrypt_mail(&self, raw: &str) -> (String, String) {
        let (Some(start), Some(end)) = (
            raw.find("-----BEGIN PGP MESSAGE-----"),
            raw.find("-----END PGP MESSAGE-----"),
        ) else {
            return (String::new(), "no encrypted part".into());
        };
        let end = end + "-----END PGP MESSAGE-----".len();
        // gpg exits non-zero when it cannot check a signature; whether it
        // decrypted is in its status lines.
        let out = self.run(
            &["--status-fd", "2", "--decrypt"],
            Some(&raw.as_bytes()[start..end]),
        );
        (out.text(), out.stderr)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .status();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
