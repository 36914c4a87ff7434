//! wgproxy's `WGPROXY_*` variables: the lowest-precedence source.

use super::*;

impl Layer {
    /// wgproxy's variables (see the module docs), looked up by `env`.
    pub(super) fn from_wgproxy_env(
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Layer, ConfigError> {
        let var = |name: &str| -> Result<Option<String>, ConfigError> {
            match env(name) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|v| ConfigError::new(format!("{name} {v:?}: not valid UTF-8"))),
            }
        };
        let server = var("WGPROXY_SERVER")?;
        let pubkey = var("WGPROXY_PUBKEY")?;
        let listen = var("WGPROXY_LISTEN")?;
        let timeout = var("WGPROXY_TIMEOUT")?;
        let loglevel = var("WGPROXY_LOGLEVEL")?;

        // Every value is checked before whether they belong together.
        let addr = match &server {
            Some(s) => Some(
                s.parse::<HostPort>()
                    .map_err(|e| ConfigError::new(format!("WGPROXY_SERVER: {e}")))?,
            ),
            None => None,
        };
        let key = match &pubkey {
            Some(s) => Some(parse_key("WGPROXY_PUBKEY", s).map_err(ConfigError::new)?),
            None => None,
        };
        let listen = match &listen {
            Some(s) => Some(parse_listen("WGPROXY_LISTEN", s).map_err(ConfigError::new)?),
            None => None,
        };
        let timeout = match &timeout {
            Some(s) => Some(parse_wgproxy_timeout(s).map_err(ConfigError::new)?),
            None => None,
        };
        let log_level = match &loglevel {
            Some(s) => Some(parse_wgproxy_loglevel(s).map_err(ConfigError::new)?),
            None => None,
        };

        let server = match (addr, key) {
            (Some(addr), Some(key)) => Server { addr, key },
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "WGPROXY_SERVER is set but WGPROXY_PUBKEY is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)",
                ))
            }
            (None, None) => {
                let set: Vec<&str> = [
                    ("WGPROXY_LISTEN", listen.is_some()),
                    ("WGPROXY_TIMEOUT", timeout.is_some()),
                    ("WGPROXY_LOGLEVEL", log_level.is_some()),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
                if let Some(first) = set.first() {
                    return Err(ConfigError::new(format!(
                        "{first} is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
                    )));
                }
                return Ok(Layer::default());
            }
        };
        Ok(Layer {
            listen: Some(vec![listen.unwrap_or(DEFAULT_LISTEN)]),
            servers: Some(vec![server]),
            wgproxy_timeout: timeout,
            scalars: Scalars {
                log_level: Some(log_level.unwrap_or(LogLevel::Warn)),
                ..Scalars::default()
            },
            ..Layer::default()
        })
    }
}

pub(super) fn parse_wgproxy_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    match t.parse::<u64>() {
        Ok(secs) if secs > 0 && t.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Duration::from_secs(secs))
        }
        _ => Err(format!(
            "WGPROXY_TIMEOUT {s:?}: expected a positive whole number of seconds"
        )),
    }
}

pub(super) fn parse_wgproxy_loglevel(s: &str) -> Result<LogLevel, String> {
    match s.trim() {
        "0" => Ok(LogLevel::Error),
        "1" => Ok(LogLevel::Warn),
        "2" => Ok(LogLevel::Info),
        "3" => Ok(LogLevel::Debug),
        _ => Err(format!(
            "WGPROXY_LOGLEVEL {s:?}: expected 0 (errors), 1 (and warnings), 2 (and info) or 3 (and debug)"
        )),
    }
}
