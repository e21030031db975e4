//! Text: the forms a notice takes (a short text, a subject, a body), the
//! template language they are written in, and what an SMS costs. Pure, and
//! below everything that renders, delivers or validates texts.

pub mod assurance;
pub mod calls;
pub mod changes;
pub mod sms;
pub mod template;

use serde::Serialize;

/// The texts of one notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    /// `None` when neither the event nor its type has a short form.
    pub short: Option<String>,
    pub subject: String,
    pub body: String,
}

impl Rendered {
    /// Renders a notice's one-time secret in at
    /// [`SECRET_MARK`](crate::model::SECRET_MARK), just before it goes out.
    pub fn reveal(&mut self, secret: &str) {
        let mark = crate::model::SECRET_MARK;
        for text in [
            Some(&mut self.subject),
            Some(&mut self.body),
            self.short.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if text.contains(mark) {
                *text = text.replace(mark, secret);
            }
        }
    }
}
