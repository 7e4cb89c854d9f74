//! The common shape of manifest YAML, read straight from granit-parser's
//! events (the parser serde-saphyr itself runs) into `serde_json::Value`.
//!
//! serde-saphyr's deserializer costs about twice its parser (it tracks
//! locations, budgets, anchors, merge keys and comments for every event), and a
//! cold start on 100,000 pods is mostly that. This reader produces the very
//! `Value`s `serde_saphyr::from_multiple_with_options::<Value>` would, for the
//! subset of YAML it can decide exactly as serde-saphyr does, and gives up
//! (`None`) on everything else, which the caller then hands to serde-saphyr:
//! anchors, aliases, tags, directives, merge keys, keys that are not plain
//! strings, duplicate keys, nesting near serde-saphyr's depth limit, and plain
//! scalars that are neither obviously strings nor canonical decimal integers
//! (floats, `0x1F`, `+5`, `0755`, YAML 1.1 booleans other than `true`/`false`
//! spellings, ...). A YAML syntax error also gives up, so the error the user
//! sees is serde-saphyr's, as before.
//!
//! Scalar resolution follows serde-saphyr's typeless path (`deserialize_any`
//! with the default options `manifest_options` keeps): a plain `""`, `~`,
//! `null`, `Null`, `NULL` is null; `y|yes|true|on` and `n|no|false|off` (any
//! ASCII case) are booleans; a decimal integer is a number; quoted and block
//! scalars are strings.

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, StrInput};

/// Deeper than this gives up: serde-saphyr's own limit (`Budget::max_depth`,
/// 64) then decides.
const MAX_DEPTH: usize = 48;
/// More comment text than this gives up (serde-saphyr's budget is 64 MiB).
const MAX_COMMENT_BYTES: usize = 1 << 20;

/// The documents of `text`, as serde-saphyr would return them (null documents
/// left out), or `None` when the text is outside the subset (see the module
/// comment) or does not parse.
pub(super) fn documents(text: &str) -> Option<Vec<Value>> {
    let budget = super::manifest_options().budget.unwrap_or_default();
    let mut options = Options::default();
    options.simple_key_max_lookahead = budget.simple_key_max_lookahead;
    options.flow_nesting_limit = budget.flow_nesting_limit;
    options.block_nesting_limit = options
        .block_nesting_limit
        .max(budget.max_depth.saturating_add(1));
    // As serde-saphyr's `comments` feature does; their bytes are counted.
    options.emit_comments = true;
    options.max_buffered_comment_events = budget.max_buffered_comment_events;
    let mut reader = Reader {
        parser: Parser::new_from_str_with_options(text, options),
        comment_bytes: 0,
    };
    let mut docs = Vec::new();
    match reader.next()? {
        Event::StreamStart => {}
        _ => return None,
    }
    loop {
        match reader.next()? {
            Event::StreamEnd => return Some(docs),
            Event::DocumentStart(_, None) => {
                let first = reader.next()?;
                let value = reader.node(first, 0)?;
                match reader.next()? {
                    Event::DocumentEnd => {}
                    _ => return None,
                }
                if !value.is_null() {
                    docs.push(value);
                }
            }
            _ => return None,
        }
    }
}

struct Reader<'a> {
    parser: Parser<'a, StrInput<'a>>,
    comment_bytes: usize,
}

impl<'a> Reader<'a> {
    /// The next event that is not a comment; `None` at a syntax error.
    fn next(&mut self) -> Option<Event<'a>> {
        loop {
            match self.parser.next_event()? {
                Ok((Event::Comment(text, _), _)) => {
                    self.comment_bytes += text.len();
                    if self.comment_bytes > MAX_COMMENT_BYTES {
                        return None;
                    }
                }
                Ok((event, _)) => return Some(event),
                Err(_) => return None,
            }
        }
    }

    /// The node that starts with `first`.
    fn node(&mut self, first: Event<'a>, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        match first {
            Event::Scalar(text, style, 0, None) => scalar(&text, style),
            Event::SequenceStart(_, 0, None) => {
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        Event::SequenceEnd => return Some(Value::Array(items)),
                        event => items.push(self.node(event, depth + 1)?),
                    }
                }
            }
            Event::MappingStart(_, 0, None) => {
                let mut map = Map::new();
                loop {
                    let key = match self.next()? {
                        Event::MappingEnd => return Some(Value::Object(map)),
                        Event::Scalar(key, style, 0, None) => key_text(key, style)?,
                        _ => return None,
                    };
                    let first = self.next()?;
                    let value = self.node(first, depth + 1)?;
                    // serde-saphyr rejects a duplicate key (DuplicateKeyPolicy::Error).
                    if map.insert(key, value).is_some() {
                        return None;
                    }
                }
            }
            // Anchors, aliases, tags.
            _ => None,
        }
    }
}

/// A mapping key: serde_json reads it as a string, which serde-saphyr gives
/// for any scalar but a null; a key that serde-saphyr may compare as a number
/// for duplicates, or a merge key, gives up.
fn key_text(key: std::borrow::Cow<'_, str>, style: ScalarStyle) -> Option<String> {
    if key == "<<" {
        return None;
    }
    if style == ScalarStyle::Plain && !matches!(scalar(&key, style)?, Value::String(_)) {
        return None;
    }
    Some(key.into_owned())
}

/// An untagged scalar as serde-saphyr's typeless path resolves it, or `None`
/// when this reader does not decide it.
fn scalar(text: &str, style: ScalarStyle) -> Option<Value> {
    if style != ScalarStyle::Plain {
        return Some(Value::String(text.to_string()));
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Some(Value::Null);
    }
    for (word, b) in [
        ("true", true),
        ("yes", true),
        ("y", true),
        ("on", true),
        ("false", false),
        ("no", false),
        ("n", false),
        ("off", false),
    ] {
        if text.eq_ignore_ascii_case(word) {
            return Some(Value::Bool(b));
        }
    }
    let bytes = text.as_bytes();
    // The integer and float grammars (decimal, 0x/0o/0b, signs, exponents,
    // underscores, `.inf`, `.nan`) use only these characters: any other makes
    // the scalar a string.
    let numeric_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_');
    if !bytes.iter().all(numeric_char) {
        return Some(Value::String(text.to_string()));
    }
    // `inf`, `nan`, `.inf`, `-.NaN`, `infinity`: the float parsers take some
    // of these spellings (not decided here).
    let lower = text.to_ascii_lowercase();
    if lower.contains("inf") || lower.contains("nan") {
        return None;
    }
    let first = bytes[0];
    if first.is_ascii_alphabetic() {
        // A word (booleans are handled above): no number starts with a letter.
        return Some(Value::String(text.to_string()));
    }
    // Starts with a digit, a sign, `.` or `_`.
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let canonical = !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical && !(negative && digits == "0") {
        let n: u64 = digits.parse().ok()?;
        return Some(Value::Number(if negative {
            Number::from(-(n as i64))
        } else {
            Number::from(n)
        }));
    }
    let unsigned = text.trim_start_matches(['+', '-']);
    let radix_prefix = ["0x", "0X", "0o", "0O", "0b", "0B"]
        .iter()
        .any(|p| unsigned.starts_with(p));
    // A letter other than an exponent's `e` cannot be in a decimal number
    // (the words above are letters only), so such a scalar is a string: a
    // Pod UID, `5f1e3b6a-...`.
    let other_letter = bytes
        .iter()
        .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'));
    if other_letter && !radix_prefix {
        return Some(Value::String(text.to_string()));
    }
    // Digits and at least two dots, nothing else: an address or a version,
    // which no number grammar takes.
    if first.is_ascii_digit()
        && text.bytes().filter(|b| *b == b'.').count() >= 2
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Some(Value::String(text.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde-saphyr returns for `text` with the manifest options.
    fn saphyr(text: &str) -> Result<Vec<Value>, String> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(text, super::super::manifest_options())
                .map_err(|e| e.to_string())?;
        Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
    }

    /// Every input this reader decides gives exactly serde-saphyr's documents;
    /// the ones it does not decide are named in `undecided`.
    #[test]
    fn decided_documents_equal_serde_saphyrs() {
        let decided = [
            // The bench's and the tests' shapes.
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-1\n  namespace: bench\nspec:\n  ports:\n  - port: 80\n    name: http\n    targetPort: 8080\n  selector:\n    app: svc-1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n, labels: {app: web}}\nspec: {containers: [{name: main}]}\nstatus:\n  podIP: 10.0.0.1\n  podIPs:\n  - ip: 10.0.0.1\n  conditions: [{type: Ready, status: \"True\"}]\n",
            // kubectl's List with a uid, a quoted resourceVersion, timestamps.
            "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    creationTimestamp: \"2024-01-01T00:00:00Z\"\n    name: a\n    resourceVersion: \"123\"\n    uid: 5f1e3b6a-8b1c-4d2e-9f3a-1234567890ab\n  spec: {}\nkind: List\nmetadata:\n  resourceVersion: \"\"\n",
            // Nulls, booleans in every spelling serde-saphyr takes, numbers.
            "a: ~\nb: null\nc: NULL\nd:\ne: yes\nf: Off\ng: N\nh: TRUE\no: on\ni: 0\nj: -12\nk: 123456789012345678\nl: '0755'\nm: \"1.5\"\n",
            // Block scalars, quoted keys, comments, flow collections, empty documents.
            "# head\n---\n---\nkey: |\n  line one\n  line two\n\"quoted key\": >\n  folded\n  text\nlist: [a, 'b', \"c\"]  # trailing\nempty: {}\nnone: []\n",
            // Strings that start like numbers.
            "ip: 192.168.1.10\nversion: 1.2.3\nuid: 0a1b2c\nimage: nginx:1.25\nport-name: 8080-tcp\npath: /healthz\nword: finite\n",
            // Syntax errors give up (serde-saphyr reports them).
            "",
        ];
        for text in decided {
            let got = documents(text).unwrap_or_else(|| panic!("undecided: {text:?}"));
            assert_eq!(Ok(got), saphyr(text), "{text:?}");
        }
        let undecided = [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "base: &b {x: 1}\nd:\n  <<: *b\n",
            "a: 1\na: 2\n",
            "a: 1.5\n",
            "a: 0x1F\n",
            "a: +5\n",
            "a: 0755\n",
            "a: 1e3\n",
            "a: .inf\n",
            "a: nan\n",
            "1: one\n",
            "? [a]\n: b\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: [\n",
            "kind: Pod\nmetadata: {name: [\n",
        ];
        for text in undecided {
            assert_eq!(documents(text), None, "{text:?}");
            // serde-saphyr still reads or rejects each of them itself.
            let _ = saphyr(text);
        }
    }

    /// The repository's own YAML (golden fixtures, deploy manifests, the
    /// demo): whatever this reader decides equals serde-saphyr's reading.
    #[test]
    fn the_repositorys_yaml_reads_the_same() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut decided = 0;
        for dir in ["tests/golden", "deploy"] {
            for file in super::super::yaml_files(&root.join(dir)).unwrap() {
                let text = std::fs::read_to_string(&file).unwrap();
                if let Some(got) = documents(&text) {
                    assert_eq!(Ok(got), saphyr(&text), "{}", file.display());
                    decided += 1;
                }
            }
        }
        assert!(decided >= 20, "only {decided} files decided");
    }

    #[test]
    fn nesting_beyond_the_limit_is_left_to_serde_saphyr() {
        let deep = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH + 2),
            "]".repeat(MAX_DEPTH + 2)
        );
        assert_eq!(documents(&deep), None);
        let shallow = format!("{}x{}", "[".repeat(10), "]".repeat(10));
        assert_eq!(documents(&shallow).map(Some), Some(saphyr(&shallow).ok()));
    }
}
