//! The `#[task]` attribute of [`parallel`](https://docs.rs/parallel).
//!
//! Users reach it as `parallel::task`; the code it generates stands on `parallel`'s runtime
//! through the hidden `parallel::__private` module. The attribute works in stages: `attr` and
//! `ast` parse the attribute and the item into a typed model, `check` records every mistake in
//! it, `expand` generates the code; `errors` gathers the mistakes so that one build reports them
//! all, and `fallback` stands in for the generated module when there are some.

mod ast;
mod attr;
mod check;
mod errors;
mod expand;
mod fallback;

use proc_macro::TokenStream;
use quote::quote;

use crate::ast::Input;
use crate::errors::Errors;

// The documentation of `parallel::task`, where docs.rs shows it. Its examples are doc tests of the
// facade (`src/lib.rs` includes this file there), not of this crate: a proc-macro crate's doc tests
// are built for the host, which here meant a second `parallel` with its whole dependency tree.
#[doc = include_str!("task.md")]
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let mut errors = Errors::default();
    let args = attr::parse(attr.into(), &mut errors);
    let input = match ast::parse(item.clone()) {
        Ok(input) => input,
        Err(error) => {
            errors.push(error);
            return with_errors(item, errors);
        }
    };
    check::input(&args, &input, &mut errors);
    if errors.is_empty() {
        return expand::input(&args, &input).into();
    }
    match &input {
        // A `self` receiver means a method, in an impl or a trait, where no module may stand.
        Input::Fn(task) if !task.has_receiver() => {
            let stub = fallback::task_fn(&args, task);
            with_errors(quote!(#item #stub), errors)
        }
        // The impl block names its own type, which callers use; it needs no stand-in, only the
        // `type Progress` that `#[task]` would write (one mistake is one error).
        Input::Impl(task) => {
            let root = expand::root(&args);
            let mut item = task.item.clone();
            expand::fill_progress(&quote!(#root::__private), &mut item);
            with_errors(quote!(#item), errors)
        }
        Input::Fn(_) => with_errors(item, errors),
    }
}

/// The user's item unchanged (with the stub of its module, for a function), followed by the
/// errors: the rest of the crate (and the IDE) keeps seeing the function and its module while the
/// mistakes are fixed.
fn with_errors(item: proc_macro2::TokenStream, errors: Errors) -> TokenStream {
    let errors = errors.finish().err().map(|error| error.to_compile_error());
    quote!(#item #errors).into()
}
