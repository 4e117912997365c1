//! Environment overrides of the daemons' TOML configuration (e.g. a container sets its listen
//! address or database URL without a file of its own).
//!
//! `BACKROOM_COORDINATOR_<KEY>` overrides the coordinator's `key`, `BACKROOM_NODE_<KEY>` the
//! node's; a table's key is reached with a double underscore
//! (`BACKROOM_COORDINATOR_PRIVACY__EPSILON_MAX` is `[privacy] epsilon_max`). The value is read as
//! a TOML value when it is one (`10`, `true`, `[2, 4, 4]`, `"text"`) and as a string otherwise.
//! Overrides are applied to the file's table before validation, so an unknown key or a bad
//! value is reported with every other problem of the file.

/// Which daemon's variables apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Coordinator,
    Node,
}

impl Daemon {
    fn prefix(self) -> &'static str {
        match self {
            Daemon::Coordinator => "BACKROOM_COORDINATOR_",
            Daemon::Node => "BACKROOM_NODE_",
        }
    }
}

/// `text` (a TOML document) with the overrides among `vars` applied, and the names of the
/// variables used. The text comes back unchanged when none applies.
pub fn apply(
    daemon: Daemon,
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(String, Vec<String>), String> {
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(daemon.prefix()) && name.len() > daemon.prefix().len())
        .collect();
    if overrides.is_empty() {
        return Ok((text.to_owned(), Vec::new()));
    }
    overrides.sort();
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut used = Vec::new();
    for (name, raw) in overrides {
        let path: Vec<String> = name[daemon.prefix().len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "{name}: empty key (use one `__` between a table and its key)"
            ));
        }
        let value = parse_value(&raw);
        let (last, tables) = path.split_last().ok_or_else(|| format!("{name}: no key"))?;
        let mut target = &mut table;
        for key in tables {
            let entry = target
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            target = entry
                .as_table_mut()
                .ok_or_else(|| format!("{name}: `{key}` is not a table"))?;
        }
        target.insert(last.clone(), value);
        used.push(name);
    }
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok((text, used))
}

/// A TOML value if `raw` is one, else the string itself.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_set_keys_and_table_keys_with_typed_values() {
        let text = "listen = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n[privacy]\ndelta = 1e-5\n";
        let (out, used) = apply(
            Daemon::Coordinator,
            text,
            vars(&[
                ("BACKROOM_COORDINATOR_LISTEN", "0.0.0.0:7443"),
                ("BACKROOM_COORDINATOR_PRIVACY__EPSILON_MAX", "8.5"),
                ("BACKROOM_COORDINATOR_MODEL__CONV_CHANNELS", "[2, 4, 4]"),
                ("BACKROOM_NODE_BACKEND", "cpu"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table["listen"].as_str(), Some("0.0.0.0:7443"));
        assert_eq!(table["data_dir"].as_str(), Some("d"));
        assert_eq!(table["privacy"]["epsilon_max"].as_float(), Some(8.5));
        assert_eq!(table["privacy"]["delta"].as_float(), Some(1e-5));
        assert_eq!(
            table["model"]["conv_channels"].as_array().map(|a| a.len()),
            Some(3)
        );
        assert_eq!(used.len(), 3, "{used:?}");
        // None apply: the text is untouched.
        let (same, used) =
            apply(Daemon::Node, text, vars(&[("HOME", "/root")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(same, text);
        assert!(used.is_empty());
    }

    #[test]
    fn a_bad_override_is_an_error_naming_it() {
        let error = apply(
            Daemon::Coordinator,
            "listen = \"a\"\n",
            vars(&[("BACKROOM_COORDINATOR_LISTEN__PORT", "1")]),
        )
        .err()
        .unwrap_or_default();
        assert!(
            error.contains("BACKROOM_COORDINATOR_LISTEN__PORT"),
            "{error}"
        );
        let error = apply(
            Daemon::Node,
            "",
            vars(&[("BACKROOM_NODE_DATA____SEED", "1")]),
        )
        .err()
        .unwrap_or_default();
        assert!(error.contains("empty key"), "{error}");
    }
}
