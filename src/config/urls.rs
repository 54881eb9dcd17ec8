//! Connection urls: hiding credentials wherever a url is shown, and refusing parameters the
//! driver does not know (it would log them, values included, or silently ignore a misspelt
//! `sslmode`).

/// Connection-url parameters the PostgreSQL driver understands.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];
/// Connection-url parameters the MySQL/MariaDB driver understands.
const MYSQL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "charset",
    "collation",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// A problem for each parameter of a `postgres://` or `mysql://` url that its driver does not
/// know, naming the parameter (never its value; a name that looks secret is not shown either).
pub(super) fn unknown_parameters(url: &str) -> Vec<String> {
    let known = if url.to_ascii_lowercase().starts_with("postgres") {
        POSTGRES_PARAMETERS
    } else {
        MYSQL_PARAMETERS
    };
    let after_userinfo = url.rfind('@').map_or(url, |i| &url[i..]);
    let Some((_, query)) = after_userinfo.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|part| part.split_once('=').map_or(part, |(n, _)| n))
        .filter(|name| {
            let options = name.starts_with("options[") && known.contains(&"options");
            !(known.contains(name) || options)
        })
        .map(|name| {
            let shown = if is_secret_parameter(name) || name.len() > 40 {
                "…"
            } else {
                name
            };
            format!(
                "unknown connection parameter `{shown}` (known: {})",
                known.join(", ")
            )
        })
        .collect()
}

/// Hide every credential in a url: the password of `scheme://user:password@host` and the value
/// of every query parameter whose name says it carries a secret (`password`, `sslpassword`,
/// `sslkey`, `token`, `secret`, `auth`, `api_key`, …) become `***`. The userinfo ends at the
/// *last* `@`, so a password holding an unencoded `/`, `?`, `#` or `@` is hidden whole.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let Some(at) = rest.rfind('@') else {
        return format!("{head}{}", redact_query(rest));
    };
    let (userinfo, after) = rest.split_at(at);
    let userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_string(),
    };
    format!("{head}{userinfo}{}", redact_query(after))
}

/// Whether a url parameter name carries a secret.
pub fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "signature",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// `…?user=a&password=x` → `…?user=a&password=***`.
fn redact_query(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_string();
    };
    let (base, query) = text.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
            _ => part.to_string(),
        })
        .collect();
    format!("{base}{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/dw"),
            "postgres://app:***@db:5432/dw"
        );
        assert_eq!(redact("postgres://db/dw"), "postgres://db/dw");
        assert_eq!(redact("mysql://root@h/x"), "mysql://root@h/x");
    }

    #[test]
    fn redact_hides_url_parameters_and_odd_passwords() {
        assert_eq!(
            redact("postgres://app@db/dw?sslmode=require&password=s3cret&sslpassword=k"),
            "postgres://app@db/dw?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(
            redact("postgres://app:pa/ss?w#rd@db:5432/dw"),
            "postgres://app:***@db:5432/dw"
        );
        assert_eq!(
            redact("http://h/x?api_token=abc&page=2"),
            "http://h/x?api_token=***&page=2"
        );
    }
}
