//! [`Errors`]: every mistake found while expanding one `#[task]`, reported together.
//!
//! A user fixing a task should see all of its mistakes in one build, not one per build, so the
//! stages push what they find here and carry on (serde_derive's `Ctxt` does the same); the entry
//! point turns the collection into `compile_error!`s beside the user's unchanged item.

use std::fmt::Display;

use quote::ToTokens;

/// The mistakes found so far, combined into one [`syn::Error`] that renders as several.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records `error`, keeping every error recorded before it.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Records `message`, pointing at `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Whether nothing has been recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// `Ok` when nothing was recorded, else every recorded error.
    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        match self.combined {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}
