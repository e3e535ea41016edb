//! Text that came from the outside world (file names, process names, cgroup paths) made safe to
//! show: any process can name a file with newlines and terminal escapes in it.

/// `text` with every control character (newline, escape, ...) shown as `\n`, `\x1b`, ...: safe to
/// print in a table or a terminal line, and still telling what the name really is.
#[must_use]
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                for unit in c.to_string().bytes() {
                    out.push_str(&format!("\\x{unit:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("/var/log/app.log"), "/var/log/app.log");
        assert_eq!(
            printable("a\"b}\nc{x=\"1\"} 99\n# HELP fake\u{1b}[2J"),
            "a\"b}\\nc{x=\"1\"} 99\\n# HELP fake\\x1b[2J"
        );
        assert_eq!(printable("tab\there\u{85}"), "tab\\there\\xc2\\x85");
    }
}
