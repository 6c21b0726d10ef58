//! FRR's `bfdd` (Debian's `frr`) as a test peer: started alone (no zebra)
//! in a namespace with a configuration written by the test, reached with
//! `vtysh` over its own socket directory, killed and removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use super::{eventually, must, Netns};

/// Where Debian installs it.
pub const BFDD: &str = "/usr/lib/frr/bfdd";

/// bfdd in a namespace, killed on drop.
pub struct Bfdd {
    child: Option<Child>,
    dir: PathBuf,
    ns: String,
}

impl Bfdd {
    /// Starts it in `ns` with `conf` (a `bfdd.conf`: the `bfd` node and its
    /// peers); `id` names its directory.
    ///
    /// # Panics
    /// When bfdd is not installed or does not start within ten seconds.
    pub fn start(ns: &Netns, id: &str, conf: &str) -> Bfdd {
        assert!(
            std::path::Path::new(BFDD).exists(),
            "{BFDD} is missing: scripts/setup.sh installs Debian's frr"
        );
        let dir = std::env::temp_dir().join(format!("patronus-bfdd-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        // bfdd drops to the frr user, which must reach its sockets.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf_path = dir.join("bfdd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let child = ns.spawn(&[
            BFDD,
            "-f",
            &path("bfdd.conf"),
            "-i",
            &path("bfdd.pid"),
            "--vty_socket",
            dir.to_str().unwrap(),
            "-z",
            &path("zserv.api"),
            "--bfdctl",
            &path("bfdd.sock"),
            "--log",
            &format!("file:{}", path("bfdd.log")),
        ]);
        let b = Bfdd {
            child: Some(child),
            dir,
            ns: ns.name.clone(),
        };
        assert!(
            eventually(Duration::from_secs(10), || b.dir.join("bfdd.vty").exists()),
            "bfdd did not start"
        );
        b
    }

    /// Runs `commands` in `vtysh` against this bfdd; its output.
    pub fn vtysh(&self, commands: &[&str]) -> String {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.ns,
            "vtysh",
            "--vty_socket",
            self.dir.to_str().unwrap(),
        ];
        for c in commands {
            args.extend(["-c", c]);
        }
        must(&args)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bfdd.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL: it says nothing more).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
