//! The certificate the gateway makes for itself when none is configured: self-signed, for the names and
//! addresses it is reached at, kept in a state folder so that a browser's exception for it survives a restart.
//! Which names to cover and when to make a new one are pure decisions; reading and writing files is `load_or_make`.

use super::tls::TlsError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Validity of a made certificate: Apple's platforms refuse a TLS certificate valid for longer than 825 days
/// even where the user trusts it, and browsers cap publicly trusted ones at 398; 397 passes both.
const VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);
/// A made certificate this close to its end is replaced at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

const CERT_FILE: &str = "gateway-cert.pem";
const KEY_FILE: &str = "gateway-key.pem";
const ABOUT_FILE: &str = "gateway-cert.json";

/// What is kept beside a made certificate, so that it is checked without parsing X.509.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    /// The names and addresses it covers.
    pub names: BTreeSet<String>,
    /// Its end, in seconds since the Unix epoch.
    pub not_after: u64,
}

/// A certificate chain and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

/// The names a made certificate covers: `localhost` and loopback, the host's name (and its `.local` form,
/// which phones resolve over mDNS), the listen address or every address of the machine when it listens on
/// all, and the configured ones.
pub fn wanted_names(
    configured: &[String],
    host_name: Option<&str>,
    listen: IpAddr,
    machine: &[IpAddr],
) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    if let Some(host) = host_name.map(str::trim).filter(|h| !h.is_empty() && !h.contains(char::is_whitespace)) {
        names.insert(host.to_ascii_lowercase());
        if !host.contains('.') {
            names.insert(format!("{}.local", host.to_ascii_lowercase()));
        }
    }
    let addresses: Vec<IpAddr> = if listen.is_unspecified() { machine.to_vec() } else { vec![listen] };
    for ip in addresses {
        let ip = ip.to_canonical();
        // A link-local IPv6 address is only usable with its interface (`fe80::1%eth0`), which no URL carries.
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_unspecified() && !link_local {
            names.insert(ip.to_string());
        }
    }
    names
        .extend(configured.iter().map(|n| n.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()));
    names
}

/// Whether a kept certificate still serves: it covers every wanted name and is not near its end.
pub fn still_serves(kept: &About, wanted: &BTreeSet<String>, now: SystemTime) -> bool {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    wanted.is_subset(&kept.names) && now + RENEW_BEFORE.as_secs() < kept.not_after
}

/// Makes a self-signed certificate for `names`, valid from a day before `now` (clocks of phones differ).
pub fn make(names: &BTreeSet<String>, now: SystemTime) -> Result<(Pem, About), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::Make)?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().cloned().collect::<Vec<_>>()).map_err(TlsError::Make)?;
    let first =
        names.iter().find(|n| n.parse::<IpAddr>().is_err() && *n != "localhost").map_or("localhost", String::as_str);
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("mqtt-video on {first}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "mqtt-video (self-signed)");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let day = Duration::from_secs(24 * 3600);
    params.not_before = (now - day).into();
    params.not_after = (now + VALIDITY).into();
    let cert = params.self_signed(&key).map_err(TlsError::Make)?;
    let not_after = (now + VALIDITY).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok((Pem { cert: cert.pem(), key: key.serialize_pem() }, About { names: names.clone(), not_after }))
}

/// The kept certificate from `dir` when it still serves, else a new one (covering the kept names too, so
/// that a name once served stays served), written back when `dir` is given. `Ok((pem, made))`.
pub fn load_or_make(dir: Option<&Path>, wanted: &BTreeSet<String>, now: SystemTime) -> Result<(Pem, bool), TlsError> {
    let kept = dir.and_then(read_kept);
    if let Some((pem, about)) = &kept {
        if still_serves(about, wanted, now) {
            return Ok((pem.clone(), false));
        }
    }
    let mut names = wanted.clone();
    if let Some((_, about)) = &kept {
        names.extend(about.names.iter().cloned());
    }
    let (pem, about) = make(&names, now)?;
    if let Some(dir) = dir {
        write_kept(dir, &pem, &about)?;
    }
    Ok((pem, true))
}

fn read_kept(dir: &Path) -> Option<(Pem, About)> {
    let cert = std::fs::read_to_string(dir.join(CERT_FILE)).ok()?;
    let key = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
    let about = serde_json::from_slice(&std::fs::read(dir.join(ABOUT_FILE)).ok()?).ok()?;
    Some((Pem { cert, key }, about))
}

/// Writes each file beside its final name and renames it over, the key readable by its owner only, so that
/// two servers starting at once leave one whole pair, never a mix.
fn write_kept(dir: &Path, pem: &Pem, about: &About) -> Result<(), TlsError> {
    let state = |source| TlsError::State { dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(state)?;
    let about = serde_json::to_vec_pretty(about).unwrap_or_default();
    let tag = format!(".{}.tmp", std::process::id());
    let files: [(&str, &[u8], u32); 3] =
        [(KEY_FILE, pem.key.as_bytes(), 0o600), (CERT_FILE, pem.cert.as_bytes(), 0o644), (ABOUT_FILE, &about, 0o644)];
    for (name, bytes, mode) in files {
        let tmp = dir.join(format!("{name}{tag}"));
        write_private(&tmp, bytes, mode).map_err(state)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(state)?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Where a made certificate is kept when `gateway.tls.state_dir` is unset: systemd's `STATE_DIRECTORY`, else
/// `$XDG_STATE_HOME/mqtt-video`, else `~/.local/state/mqtt-video`; `None` with none of them.
pub fn default_state_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("STATE_DIRECTORY") {
        // systemd lists several folders with `:` when the unit names several.
        return dir.split(':').next().map(PathBuf::from);
    }
    if let Some(dir) = set("XDG_STATE_HOME") {
        return Some(Path::new(&dir).join("mqtt-video"));
    }
    set("HOME").map(|home| Path::new(&home).join(".local/state/mqtt-video"))
}

/// The machine's host name, as the kernel has it.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

/// The machine's interface addresses (none when they cannot be read).
pub fn machine_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs().map(|all| all.into_iter().map(|i| i.ip()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn names_cover_the_host_its_addresses_and_the_configured_ones() {
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        let link_local: IpAddr = "fe80::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let all: IpAddr = "0.0.0.0".parse().unwrap();
        /// Configured names, host name, listen address, the machine's addresses, the names expected.
        type Case<'a> = (&'a [String], Option<&'a str>, IpAddr, &'a [IpAddr], &'a [&'a str]);
        let cases: [Case; 4] = [
            // Listening on all addresses: every usable one of the machine, with the host and its mDNS name.
            (
                &[],
                Some("NAS"),
                all,
                &[lan, link_local, mapped],
                &["localhost", "127.0.0.1", "::1", "nas", "nas.local", "192.168.1.5", "10.0.0.2"],
            ),
            // One listen address: that one only; a dotted host name gets no `.local`.
            (
                &[],
                Some("nas.home.arpa"),
                lan,
                &[lan, mapped],
                &["localhost", "127.0.0.1", "::1", "nas.home.arpa", "192.168.1.5"],
            ),
            // Configured names, bracketed IPv6 included; no host name known.
            (
                &["Cameras.Example".into(), "[2001:db8::7]".into()],
                None,
                "127.0.0.1".parse().unwrap(),
                &[],
                &["localhost", "127.0.0.1", "::1", "cameras.example", "2001:db8::7"],
            ),
            // A host name with a space (a broken container setting) is left out.
            (&[], Some("my box"), "127.0.0.1".parse().unwrap(), &[], &["localhost", "127.0.0.1", "::1"]),
        ];
        for (configured, host, listen, machine, expected) in cases {
            assert_eq!(wanted_names(configured, host, listen, machine), set(expected), "{host:?} {listen}");
        }
    }

    #[test]
    fn a_kept_certificate_serves_until_a_name_is_missing_or_its_end_is_near() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let secs = |d: Duration| (now + d).duration_since(UNIX_EPOCH).unwrap().as_secs();
        let kept = |names: &[&str], ends_in: Duration| About { names: set(names), not_after: secs(ends_in) };
        let year = Duration::from_secs(365 * 24 * 3600);
        let cases = [
            (kept(&["a", "b"], year), set(&["a"]), true),
            (kept(&["a", "b"], year), set(&["a", "b"]), true),
            (kept(&["a"], year), set(&["a", "c"]), false),
            (kept(&["a"], RENEW_BEFORE + Duration::from_secs(60)), set(&["a"]), true),
            (kept(&["a"], RENEW_BEFORE - Duration::from_secs(60)), set(&["a"]), false),
            (About { names: set(&["a"]), not_after: 0 }, set(&["a"]), false),
        ];
        for (about, wanted, serves) in cases {
            assert_eq!(still_serves(&about, &wanted, now), serves, "{about:?} for {wanted:?}");
        }
    }

    #[test]
    fn the_state_folder_follows_systemd_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            default_state_dir(env(&[("STATE_DIRECTORY", "/var/lib/a:/var/lib/b"), ("HOME", "/h")])),
            Some("/var/lib/a".into())
        );
        assert_eq!(default_state_dir(env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])), Some("/x/mqtt-video".into()));
        assert_eq!(
            default_state_dir(env(&[("XDG_STATE_HOME", ""), ("HOME", "/h")])),
            Some("/h/.local/state/mqtt-video".into())
        );
        assert_eq!(default_state_dir(env(&[])), None);
    }

    #[test]
    fn a_made_certificate_is_kept_and_found_again_and_grows_its_names() {
        let dir = std::env::temp_dir().join(format!("mqtt-video-cert-{}", std::process::id()));
        let now = SystemTime::now();
        let (first, made) = load_or_make(Some(&dir), &set(&["localhost", "nas"]), now).unwrap();
        assert!(made);
        let (again, made) = load_or_make(Some(&dir), &set(&["nas"]), now).unwrap();
        assert!(!made, "a kept certificate covering the names is reused");
        assert_eq!(again.cert, first.cert);
        let (grown, made) = load_or_make(Some(&dir), &set(&["cams.example"]), now).unwrap();
        assert!(made, "a missing name makes a new certificate");
        assert_ne!(grown.cert, first.cert);
        let about = read_kept(&dir).unwrap().1;
        assert_eq!(about.names, set(&["localhost", "nas", "cams.example"]), "the old names stay covered");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is its owner's only");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
