//! JSON mode: a character-level check that text is a prefix of a JSON object (RFC 8259), so that
//! sampling can keep only tokens that continue one (`format: "json"`), and knows when the object
//! is complete.

/// Where a prefix of a JSON object stands. Cheap to clone: sampling tries each candidate token
/// on a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonPrefix {
    /// Open containers as bits, innermost lowest: 1 for an object, 0 for an array.
    stack: u64,
    depth: u8,
    state: State,
    /// Whitespace characters in a row outside strings (bounded, so a reply cannot idle in it).
    blank: u8,
}

/// Most whitespace characters in a row outside strings.
const MAX_BLANK: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level object.
    Start,
    /// Expecting a value (after `:`, or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// Inside a string (a key when `key`); `escape`: 0 none, 1 after `\`, 2..=5 hex digits left + 1.
    Str { key: bool, escape: u8 },
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's closer.
    AfterValue,
    /// Inside a number.
    Number(Num),
    /// Inside `true`, `false` or `null`: the rest to come.
    Literal(&'static str),
    /// The top-level object is closed.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        JsonPrefix {
            stack: 0,
            depth: 0,
            state: State::Start,
            blank: 0,
        }
    }
}

impl JsonPrefix {
    /// Whether a whole object has been read (nothing may follow).
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the text so far ends inside a string (where any character may come).
    pub fn in_string(&self) -> bool {
        matches!(self.state, State::Str { .. })
    }

    /// Adds `text`; `false` (leaving the state unspecified) if it cannot continue a JSON object.
    pub fn push_str(&mut self, text: &str) -> bool {
        text.chars().all(|c| self.push(c))
    }

    /// Adds one character; `false` if it cannot continue a JSON object.
    pub fn push(&mut self, c: char) -> bool {
        let blank = matches!(c, ' ' | '\n' | '\r' | '\t');
        if let State::Str { key, escape } = self.state {
            self.blank = 0;
            return self.string(c, key, escape);
        }
        if let State::Number(n) = self.state {
            match number(n, c) {
                Some(next) => {
                    self.state = State::Number(next);
                    return true;
                }
                // The number ended; the character goes on after it.
                None if matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp) => {
                    self.state = State::AfterValue;
                }
                None => return false,
            }
        }
        if let State::Literal(rest) = self.state {
            let mut chars = rest.chars();
            if chars.next() != Some(c) {
                return false;
            }
            let rest = chars.as_str();
            self.state = if rest.is_empty() {
                State::AfterValue
            } else {
                State::Literal(rest)
            };
            return true;
        }
        if blank {
            if self.state == State::Done {
                return false;
            }
            self.blank += 1;
            return self.blank <= MAX_BLANK;
        }
        self.blank = 0;
        match (self.state, c) {
            (State::Start, '{') => self.open(true),
            (State::Value | State::ValueOrClose, _) if self.value(c) => true,
            (State::ValueOrClose, ']') | (State::KeyOrClose, '}') => self.close(),
            (State::KeyOrClose | State::Key, '"') => {
                self.state = State::Str {
                    key: true,
                    escape: 0,
                };
                true
            }
            (State::Colon, ':') => {
                self.state = State::Value;
                true
            }
            (State::AfterValue, ',') => {
                self.state = match self.innermost() {
                    Some(true) => State::Key,
                    Some(false) => State::Value,
                    None => return false,
                };
                true
            }
            (State::AfterValue, '}') if self.innermost() == Some(true) => self.close(),
            (State::AfterValue, ']') if self.innermost() == Some(false) => self.close(),
            _ => false,
        }
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn innermost(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.stack & 1 == 1)
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth >= 64 {
            return false;
        }
        self.stack = (self.stack << 1) | u64::from(object);
        self.depth += 1;
        self.state = if object {
            State::KeyOrClose
        } else {
            State::ValueOrClose
        };
        true
    }

    fn close(&mut self) -> bool {
        self.stack >>= 1;
        self.depth -= 1;
        self.state = if self.depth == 0 {
            State::Done
        } else {
            State::AfterValue
        };
        true
    }

    /// Starts a value with `c`, if one can start so.
    fn value(&mut self, c: char) -> bool {
        self.state = match c {
            '{' => return self.open(true),
            '[' => return self.open(false),
            '"' => State::Str {
                key: false,
                escape: 0,
            },
            '-' => State::Number(Num::Minus),
            '0' => State::Number(Num::Zero),
            '1'..='9' => State::Number(Num::Int),
            't' => State::Literal("rue"),
            'f' => State::Literal("alse"),
            'n' => State::Literal("ull"),
            _ => return false,
        };
        true
    }

    fn string(&mut self, c: char, key: bool, escape: u8) -> bool {
        let next = match escape {
            0 => match c {
                '"' => {
                    self.state = if key { State::Colon } else { State::AfterValue };
                    return true;
                }
                '\\' => 1,
                c if (c as u32) < 0x20 => return false,
                _ => 0,
            },
            1 => match c {
                '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => 0,
                'u' => 5,
                _ => return false,
            },
            n if c.is_ascii_hexdigit() => {
                if n == 2 {
                    0
                } else {
                    n - 1
                }
            }
            _ => return false,
        };
        self.state = State::Str { key, escape: next };
        true
    }
}

/// The number state after `c`, or `None` if `c` does not continue the number.
fn number(n: Num, c: char) -> Option<Num> {
    Some(match (n, c) {
        (Num::Minus, '0') => Num::Zero,
        (Num::Minus, '1'..='9') | (Num::Int, '0'..='9') => Num::Int,
        (Num::Zero | Num::Int, '.') => Num::Dot,
        (Num::Dot | Num::Frac, '0'..='9') => Num::Frac,
        (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
        (Num::E, '+' | '-') => Num::ESign,
        (Num::E | Num::ESign | Num::Exp, '0'..='9') => Num::Exp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> Option<bool> {
        let mut p = JsonPrefix::default();
        p.push_str(text).then(|| p.is_complete())
    }

    #[test]
    fn objects_are_read_whole_and_their_prefixes_are_accepted() {
        let whole =
            r#" {"a": [1, -2.5e+3, 0, true, null, {"b": "x\"\u00e9\n"}], "c": {}, "d": []} "#;
        assert_eq!(reads(whole.trim_end()), Some(true));
        for end in 0..whole.trim_end().len() {
            if whole.is_char_boundary(end) {
                assert_eq!(reads(&whole[..end]), Some(false), "{}", &whole[..end]);
            }
        }
        assert_eq!(reads("{\"é\": \"ünï ✓\"}"), Some(true));
    }

    #[test]
    fn what_is_not_json_is_refused() {
        for bad in [
            "[1]",
            "\"x\"",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": -}",
            "{\"a\": tru}x",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12g4\"}",
            "{\"a\": \"line\nbreak\"}",
            "{} {}",
            "{}x",
            "{\"a\": 1]",
        ] {
            assert_eq!(reads(bad), None, "{bad}");
        }
        // No endless whitespace.
        assert_eq!(reads(&format!("{{{}", " ".repeat(17))), None);
        assert_eq!(reads(&format!("{{{}}}", " ".repeat(16))), Some(true));
    }
}
