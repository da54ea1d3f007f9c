//! The arguments of the attribute itself: `#[task(name = "...", crate = path)]` and the policy
//! keys `timeout = "2s"`, `retries = 3`, `backoff = "100ms"`, `retry_failed`.
//!
//! Parsing never stops at the first mistake: an unknown key, a key given twice and a malformed
//! value are each recorded and the remaining keys still read, so that every mistake in the
//! attribute shows up in the same build.

use std::time::Duration;

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
    /// `timeout = "2s"`: the limit of each attempt.
    pub(crate) timeout: Option<Duration>,
    /// `retries = N`: how many more attempts after the first.
    pub(crate) retries: Option<u32>,
    /// `backoff = "100ms"`: the wait before the first retry.
    pub(crate) backoff: Option<Duration>,
    /// `retry_failed`: the key itself, where a mistake about it points.
    pub(crate) retry_failed: Option<Path>,
}

impl Args {
    /// Whether any policy key was given (else the task keeps `Task`'s default policy).
    pub(crate) fn has_policy(&self) -> bool {
        self.timeout.is_some()
            || self.retries.is_some()
            || self.backoff.is_some()
            || self.retry_failed.is_some()
    }
}

/// A `name = "..."` argument.
pub(crate) struct NameArg {
    /// The `name` key, where mistakes about the argument as a whole point.
    pub(crate) key: Path,
    /// The name itself.
    pub(crate) value: LitStr,
}

const KNOWN_KEYS: &str = "`name`, `crate`, `timeout`, `retries`, `backoff` and `retry_failed`";

/// The longest backoff: the wait before a retry is capped at one minute (as in the runtime).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Each key and how it is written, for the messages.
const KEYS: [(&str, &str); 6] = [
    ("name", "name = \"billing::charge\""),
    ("crate", "crate = path::to::parallel"),
    ("timeout", "timeout = \"2s\""),
    ("retries", "retries = 3"),
    ("backoff", "backoff = \"100ms\""),
    ("retry_failed", "retry_failed"),
];

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
    let mut seen: [Option<Path>; KEYS.len()] = Default::default();
    for meta in metas {
        let key = meta.path().clone();
        let Some(index) = KEYS.iter().position(|(name, _)| key.is_ident(name)) else {
            errors.spanned(
                &key,
                format_args!(
                    "unknown key `{}` in `#[task(...)]`; the known keys are {KNOWN_KEYS}",
                    key_text(&key)
                ),
            );
            continue;
        };
        let (name, syntax) = KEYS[index];
        if seen[index].is_some() {
            errors.spanned(&key, format_args!("`{name}` is given twice; keep one of them"));
            continue;
        }
        seen[index] = Some(key.clone());
        if name == "retry_failed" {
            match meta {
                Meta::Path(_) => args.retry_failed = Some(key),
                _ => errors.spanned(&meta, "`retry_failed` is a flag; write `retry_failed`"),
            }
            continue;
        }
        let Meta::NameValue(MetaNameValue { value, .. }) = meta else {
            errors.spanned(&meta, format_args!("write `{syntax}`"));
            continue;
        };
        match name {
            "name" => {
                if let Some(value) = parse_name(&value, errors) {
                    args.name = Some(NameArg { key, value });
                }
            }
            "crate" => args.krate = parse_crate(&value, errors),
            "timeout" => {
                args.timeout = parse_duration(&value, name, errors).filter(|timeout| {
                    let is_zero = timeout.is_zero();
                    if is_zero {
                        errors.spanned(
                            &value,
                            "a zero timeout would end every attempt at once; write a positive \
                             duration such as `timeout = \"2s\"`, or remove the key",
                        );
                    }
                    !is_zero
                });
            }
            "backoff" => {
                args.backoff = parse_duration(&value, name, errors).filter(|backoff| {
                    let is_too_long = *backoff > MAX_BACKOFF;
                    if is_too_long {
                        errors.spanned(
                            &value,
                            "the wait before a retry is capped at one minute; write a backoff \
                             of at most `\"1m\"`",
                        );
                    }
                    !is_too_long
                });
            }
            _ => args.retries = parse_retries(&value, errors),
        }
    }
    if let (Some(key), None) = (&args.retry_failed, args.retries) {
        errors.spanned(
            key,
            "`retry_failed` retries the task's own `Err(e)`, but no retries are allowed; add \
             `retries = N`",
        );
    }
    args
}

/// Parses a duration literal: a number (`250`, `1.5`) and a unit, `ms`, `s`, `m` or `h`.
fn parse_duration(value: &Expr, key: &str, errors: &mut Errors) -> Option<Duration> {
    let text = match value {
        Expr::Lit(ExprLit { lit: Lit::Str(text), .. }) => text,
        _ => {
            errors.spanned(
                value,
                format_args!(
                    "`{key}` takes a duration as a string, such as `{key} = \"250ms\"`, \
                     `\"2s\"` or `\"1m\"`"
                ),
            );
            return None;
        }
    };
    let duration = duration_from_text(&text.value());
    if duration.is_none() {
        errors.spanned(
            text,
            format_args!(
                "`{:?}` is not a duration; write a number and a unit (`ms`, `s`, `m` or `h`), \
                 such as `\"250ms\"`, `\"2s\"`, `\"1.5s\"` or `\"1m\"`",
                text.value()
            ),
        );
    }
    duration
}

/// `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` as a duration; `None` for anything else.
pub(crate) fn duration_from_text(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let is_digits = |part: &str| part.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    let nanos = whole.checked_mul(nanos_per_unit)? + fraction * nanos_per_unit / scale;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

fn parse_retries(value: &Expr, errors: &mut Errors) -> Option<u32> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Int(number), .. }) => match number.base10_parse::<u32>() {
            Ok(retries) => Some(retries),
            Err(_) => {
                errors.spanned(
                    number,
                    "`retries` takes a whole number of retries up to 4294967295, such as \
                     `retries = 3`",
                );
                None
            }
        },
        _ => {
            errors.spanned(value, "`retries` takes a whole number, such as `retries = 3`");
            None
        }
    }
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
    fn reads_the_policy_keys() {
        let args = parse_ok(quote!(timeout = "2s", retries = 3, backoff = "250ms", retry_failed));
        assert_eq!(args.timeout, Some(Duration::from_secs(2)));
        assert_eq!(args.retries, Some(3));
        assert_eq!(args.backoff, Some(Duration::from_millis(250)));
        assert!(args.retry_failed.is_some() && args.has_policy());
        assert!(!parse_ok(quote!(name = "x")).has_policy());
    }

    #[test]
    fn durations_are_a_number_and_a_unit() {
        let parse = duration_from_text;
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("0.25ms"), Some(Duration::from_micros(250)));
        assert_eq!(parse("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("0ms"), Some(Duration::ZERO));
        for bad in ["", "2", "s", "2 s", "2sec", "-1s", "1.s", ".5s", "1.2.3s", "2S", "1e3ms"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("99999999999999999999h"), None);
    }

    #[test]
    fn reports_policy_mistakes() {
        let found = messages(quote!(
            timeout = "2 seconds",
            backoff = 100,
            retries = -1,
            retry_failed = true
        ));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains("is not a duration"), "{found:?}");
        assert!(found[1].contains("`backoff` takes a duration as a string"), "{found:?}");
        assert!(found[2].contains("`retries` takes a whole number"), "{found:?}");
        assert!(found[3].contains("`retry_failed` is a flag"), "{found:?}");
        let found = messages(quote!(timeout = "0s", backoff = "2m", retry_failed));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("zero timeout"), "{found:?}");
        assert!(found[1].contains("capped at one minute"), "{found:?}");
        assert!(found[2].contains("add `retries = N`"), "{found:?}");
    }

    #[test]
    fn rejects_an_empty_name_and_a_key_without_value() {
        assert!(messages(quote!(name = " ")).iter().any(|m| m.contains("empty")));
        assert!(messages(quote!(name)).iter().any(|m| m.contains("write `name = ")));
    }
}
