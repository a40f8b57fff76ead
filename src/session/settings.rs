//! A session's settings (SET/RESET outside a transaction, and its startup parameters), and what
//! a server connection with other settings needs to match them. Pure.

use std::sync::Arc;

use crate::classify::Setting;
use crate::pool::conn::SettingsList;

/// Session parameters the client set, replayed on a server connection that has other ones.
/// Later settings of the same name replace earlier ones.
#[derive(Debug, Clone)]
pub struct Settings {
    list: SettingsList,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            list: Arc::from(Vec::new()),
        }
    }
}

impl Settings {
    pub fn list(&self) -> &SettingsList {
        &self.list
    }

    pub fn apply(&mut self, setting: &Setting, sql: &Arc<str>) {
        let mut list: Vec<(String, Arc<str>)> = self.list.to_vec();
        match setting {
            Setting::Set { name, .. } => {
                list.retain(|(n, _)| n != name);
                list.push((name.clone(), sql.clone()));
            }
            Setting::Reset { name } => list.retain(|(n, _)| n != name),
            Setting::ResetAll | Setting::DiscardAll => list.clear(),
        }
        self.list = Arc::from(list);
    }

    /// Forgets the setting `name` (a startup setting that only restated a default).
    pub fn remove(&mut self, name: &str) {
        if self.list.iter().any(|(n, _)| n == name) {
            let list: Vec<(String, Arc<str>)> = self
                .list
                .iter()
                .filter(|(n, _)| n != name)
                .cloned()
                .collect();
            self.list = Arc::from(list);
        }
    }

    /// A setting given at startup (`name=value`, or `-c name=value` in `options`).
    pub fn apply_startup(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let sql: Arc<str> = Arc::from(format!(
            "SET {} = {}",
            quote_ident(&name),
            quote_literal(value)
        ));
        let setting = Setting::Set {
            name,
            value: value.to_owned(),
        };
        self.apply(&setting, &sql);
    }

    /// The statements that bring a server connection with `server` settings to these; `None`
    /// when it already has them. Unknown server settings (`None`) start from RESET ALL.
    pub fn replay_sql(&self, server: Option<&SettingsList>) -> Option<String> {
        let mut sql = String::new();
        let push = |sql: &mut String, s: &str| {
            if !sql.is_empty() {
                // A newline first: a recorded statement may end in a `--` comment.
                sql.push_str("\n;\n");
            }
            sql.push_str(s.trim().trim_end_matches(';'));
        };
        match server {
            Some(s) if Arc::ptr_eq(s, &self.list) || **s == *self.list => return None,
            Some(s) => {
                for (name, _) in s.iter() {
                    if !self.list.iter().any(|(n, _)| n == name) {
                        push(&mut sql, &format!("RESET {}", quote_ident(name)));
                    }
                }
                for (name, stmt) in self.list.iter() {
                    if !s.iter().any(|(n, q)| n == name && q == stmt) {
                        push(&mut sql, stmt);
                    }
                }
            }
            None => {
                push(&mut sql, "RESET ALL");
                for (_, stmt) in self.list.iter() {
                    push(&mut sql, stmt);
                }
            }
        }
        Some(sql)
    }
}

/// `"name"`, with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'` as a standard-conforming literal (E'…' when it holds a backslash).
pub fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str) -> Setting {
        Setting::Set {
            name: n.into(),
            value: "x".into(),
        }
    }

    #[test]
    fn replay_from_unknown_state_resets_everything_first() {
        let mut s = Settings::default();
        s.apply(&set("search_path"), &Arc::from("SET search_path = a"));
        s.apply(&set("timezone"), &Arc::from("SET TIME ZONE 'UTC';"));
        s.apply(&set("search_path"), &Arc::from("SET search_path = b"));
        assert_eq!(
            s.replay_sql(None).as_deref(),
            Some("RESET ALL\n;\nSET TIME ZONE 'UTC'\n;\nSET search_path = b")
        );
        s.apply(
            &Setting::Reset {
                name: "timezone".into(),
            },
            &Arc::from("RESET timezone"),
        );
        assert_eq!(
            s.replay_sql(None).as_deref(),
            Some("RESET ALL\n;\nSET search_path = b")
        );
        s.apply(&Setting::DiscardAll, &Arc::from("DISCARD ALL"));
        assert_eq!(s.replay_sql(None).as_deref(), Some("RESET ALL"));
    }

    #[test]
    fn replay_sends_only_the_difference() {
        let mut server = Settings::default();
        server.apply(&set("search_path"), &Arc::from("SET search_path = a"));
        server.apply(&set("datestyle"), &Arc::from("SET datestyle = ISO"));
        let mut session = Settings::default();
        session.apply(&set("search_path"), &Arc::from("SET search_path = b"));
        session.apply(
            &set("application_name"),
            &Arc::from("SET application_name = 'x'"),
        );
        let cases = [
            (Some(session.list().clone()), None),
            (
                Some(server.list().clone()),
                Some("RESET \"datestyle\"\n;\nSET search_path = b\n;\nSET application_name = 'x'"),
            ),
            (
                Some(Settings::default().list().clone()),
                Some("SET search_path = b\n;\nSET application_name = 'x'"),
            ),
        ];
        for (server, want) in cases {
            assert_eq!(session.replay_sql(server.as_ref()).as_deref(), want);
        }
        // Equal lists built separately need nothing either.
        let mut again = Settings::default();
        again.apply(&set("search_path"), &Arc::from("SET search_path = b"));
        again.apply(
            &set("application_name"),
            &Arc::from("SET application_name = 'x'"),
        );
        assert_eq!(session.replay_sql(Some(again.list())), None);
    }

    #[test]
    fn startup_settings_are_quoted() {
        let mut s = Settings::default();
        s.apply_startup("application_name", "it's \\ mine");
        s.apply_startup("DateStyle", "ISO, MDY");
        assert_eq!(
            s.replay_sql(None).as_deref(),
            Some("RESET ALL\n;\nSET \"application_name\" = E'it''s \\\\ mine'\n;\nSET \"datestyle\" = 'ISO, MDY'")
        );
    }
}
