//! The arguments of the attribute itself: `#[task(name = "...", crate = path)]`.
//!
//! Parsing never stops at the first mistake: an unknown key, a key given twice and a malformed
//! value are each recorded and the remaining keys still read, so that every mistake in the
//! attribute shows up in the same build.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, MetaNameValue, Path, Token};

use crate::errors::Errors;

/// What `#[task(...)]` asked for; a key left out is `None`.
#[derive(Default)]
pub(crate) struct Args {
    /// `name = "..."`: the registry name, overriding the default, with its key for error spans.
    pub(crate) name: Option<NameArg>,
    /// `crate = path`: the path to the runtime, replacing `::parallel`.
    pub(crate) krate: Option<Path>,
}

/// A `name = "..."` argument.
pub(crate) struct NameArg {
    /// The `name` key, where mistakes about the argument as a whole point.
    pub(crate) key: Path,
    /// The name itself.
    pub(crate) value: LitStr,
}

const KNOWN_KEYS: &str = "`name` and `crate`";

/// Parses the tokens inside `#[task(...)]`, recording each mistake in `errors`.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(metas) => metas,
        Err(error) => {
            errors.push(error);
            return args;
        }
    };
    let mut seen_name: Option<Path> = None;
    let mut seen_crate: Option<Path> = None;
    for meta in metas {
        let key = meta.path().clone();
        let (seen, syntax) = if key.is_ident("name") {
            (&mut seen_name, "name = \"billing::charge\"")
        } else if key.is_ident("crate") {
            (&mut seen_crate, "crate = path::to::parallel")
        } else {
            errors.spanned(
                &key,
                format_args!(
                    "unknown key `{}` in `#[task(...)]`; the known keys are {KNOWN_KEYS}",
                    key_text(&key)
                ),
            );
            continue;
        };
        if seen.is_some() {
            errors.spanned(
                &key,
                format_args!("`{}` is given twice; keep one of them", key_text(&key)),
            );
            continue;
        }
        *seen = Some(key.clone());
        let Meta::NameValue(MetaNameValue { value, .. }) = meta else {
            errors.spanned(&meta, format_args!("write `{syntax}`"));
            continue;
        };
        if key.is_ident("name") {
            if let Some(value) = parse_name(&value, errors) {
                args.name = Some(NameArg { key, value });
            }
        } else if let Some(path) = parse_crate(&value, errors) {
            args.krate = Some(path);
        }
    }
    args
}

fn parse_name(value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(name), .. }) => {
            if name.value().trim().is_empty() {
                errors.spanned(
                    name,
                    "the task name is empty; write a name such as `name = \"billing::charge\"`",
                );
                None
            } else {
                Some(name.clone())
            }
        }
        _ => {
            errors.spanned(
                value,
                "`name` takes a string literal; write `name = \"billing::charge\"`",
            );
            None
        }
    }
}

fn parse_crate(value: &Expr, errors: &mut Errors) -> Option<Path> {
    let path = match value {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => path.path.clone(),
        // serde spells its own option `crate = "..."`; accept that spelling too.
        Expr::Lit(ExprLit { lit: Lit::Str(text), .. }) => match text.parse::<Path>() {
            Ok(path) => path,
            Err(_) => {
                errors.spanned(text, "`crate` takes a path; write `crate = path::to::parallel`");
                return None;
            }
        },
        _ => {
            errors.spanned(value, "`crate` takes a path; write `crate = path::to::parallel`");
            return None;
        }
    };
    if let Some(segment) = path.segments.iter().find(|segment| !segment.arguments.is_empty()) {
        errors.spanned(
            &segment.arguments,
            "the path to the runtime takes no generic arguments; write `crate = path::to::parallel`",
        );
        return None;
    }
    Some(path)
}

fn key_text(key: &Path) -> String {
    let segments: Vec<String> =
        key.segments.iter().map(|segment| segment.ident.to_string()).collect();
    segments.join("::")
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse_ok(tokens: TokenStream) -> Args {
        let mut errors = Errors::default();
        let args = parse(tokens, &mut errors);
        assert!(errors.is_empty(), "{:?}", errors.finish().unwrap_err().to_string());
        args
    }

    fn messages(tokens: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        parse(tokens, &mut errors);
        errors.finish().map_or_else(|e| e.into_iter().map(|e| e.to_string()).collect(), |()| vec![])
    }

    #[test]
    fn reads_both_keys() {
        let args = parse_ok(quote!(name = "billing::charge", crate = ::some::path));
        assert_eq!(args.name.unwrap().value.value(), "billing::charge");
        let krate = args.krate.unwrap();
        assert!(krate.leading_colon.is_some());
        assert_eq!(krate.segments.len(), 2);
    }

    #[test]
    fn nothing_is_the_default() {
        let args = parse_ok(quote!());
        assert!(args.name.is_none() && args.krate.is_none());
    }

    #[test]
    fn accepts_serde_s_string_spelling_of_crate() {
        let args = parse_ok(quote!(crate = "crate::rt"));
        assert_eq!(args.krate.unwrap().segments.len(), 2);
    }

    #[test]
    fn reports_every_mistake() {
        let found = messages(quote!(nmae = "x", name = 1, name = "y", crate = 2, crate(x)));
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[0].contains("unknown key `nmae`"), "{found:?}");
        assert!(found[1].contains("`name` takes a string literal"), "{found:?}");
        assert!(found[2].contains("`name` is given twice"), "{found:?}");
        assert!(found[3].contains("`crate` takes a path"), "{found:?}");
        assert!(found[4].contains("`crate` is given twice"), "{found:?}");
    }

    #[test]
    fn rejects_an_empty_name_and_a_key_without_value() {
        assert!(messages(quote!(name = " ")).iter().any(|m| m.contains("empty")));
        assert!(messages(quote!(name)).iter().any(|m| m.contains("write `name = ")));
    }
}
