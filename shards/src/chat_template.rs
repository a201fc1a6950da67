//! Chat templates: the model's own Jinja template from `tokenizer.chat_template`, rendered with
//! minijinja under the same settings transformers uses, or a plain transcript for base models.

pub use hearth_protocol::ChatMessage;
use minijinja::{Environment, ErrorKind};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;

/// Template used for models that ship none: a plain transcript a base model can continue.
const PLAIN_TRANSCRIPT: &str =
    "{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}\
{% if add_generation_prompt %}Assistant:{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Text that means the model started writing the next turn (plain transcripts only).
    stop_strings: Vec<String>,
    from_model: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate(from_model: {})", self.from_model)
    }
}

impl ChatTemplate {
    /// The model's template, or the plain transcript when the file has none.
    pub fn from_gguf(gguf: &Gguf, tokenizer: &Tokenizer) -> Result<Self> {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_owned()
        };
        let (bos, eos) = (text(tokenizer.bos()), text(tokenizer.eos()));
        match gguf.get_str("tokenizer.chat_template") {
            Ok(source) => Self::new(source, bos, eos, true),
            Err(_) => Self::new(PLAIN_TRANSCRIPT, bos, eos, false),
        }
    }

    /// Compiles `source` as a chat template.
    pub fn new(source: &str, bos: String, eos: String, from_model: bool) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders chat templates with these two settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| Error::Template(format!("cannot compile: {e}")))?;
        let stop_strings = if from_model {
            Vec::new()
        } else {
            vec!["\nUser:".to_owned()]
        };
        Ok(ChatTemplate {
            env,
            bos,
            eos,
            stop_strings,
            from_model,
        })
    }

    /// Whether the template came from the model file (instruct models) rather than the fallback.
    pub fn is_from_model(&self) -> bool {
        self.from_model
    }

    /// Stop strings that go with this template.
    pub fn stop_strings(&self) -> &[String] {
        &self.stop_strings
    }

    /// Renders the conversation; with `add_generation_prompt`, ends where the assistant speaks.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| Error::Template(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_transformers_whitespace_rules() {
        let src = "{% for m in messages %}\n  <|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let t = ChatTemplate::new(src, "<s>".into(), "</s>".into(), true).unwrap();
        let out = t.render(&[ChatMessage::new("user", " hi ")], true).unwrap();
        assert_eq!(out, "  <|user|>hi\n<|assistant|>");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(src, String::new(), String::new(), true).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  yo ")], false)
                .unwrap(),
            "YO"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("first message must be from the user"),
            "{err}"
        );
    }

    #[test]
    fn plain_transcript_for_models_without_template() {
        let t = ChatTemplate::new(PLAIN_TRANSCRIPT, String::new(), String::new(), false).unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "hello")], true)
            .unwrap();
        assert_eq!(out, "User: hello\n\nAssistant:");
        assert_eq!(t.stop_strings(), ["\nUser:"]);
    }
}
