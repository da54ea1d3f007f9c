//! Judges the model: every way a function or an impl block cannot become a task.
//!
//! Each mistake is recorded with a span on the smallest token that is wrong and a lowercase
//! message saying what to write instead; checking goes on after a mistake, so one build lists
//! them all. Whether argument, output and error types really are serde types that may cross the
//! worker boundary is left to the compiler (see `expand`): only what can be seen in the syntax is
//! judged here — borrows, generics, `impl Trait`.

use quote::{quote, ToTokens};
use syn::{
    GenericArgument, GenericParam, ImplItem, Lifetime, PathArguments, ReturnType, Type, TypePath,
    TypeReference,
};

use crate::ast::{self, Access, Input, Output, Param, TaskFn, TaskImpl};
use crate::attr::Args;
use crate::errors::Errors;

/// Records every mistake in `input` and in how `args` apply to it.
pub(crate) fn input(args: &Args, input: &Input, errors: &mut Errors) {
    match input {
        Input::Fn(task) => {
            task_fn(task, errors);
            if matches!(task.output, Output::Unit | Output::Value(_)) {
                infallible_retry_failed(args, "it does not return `Result<T, E>`", errors);
            }
        }
        Input::Impl(task) => {
            task_impl(args, task, errors);
            policy_of_impl(args, task, errors);
        }
    }
}

/// `retry_failed` on a task that cannot fail: nothing for it to retry.
fn infallible_retry_failed(args: &Args, because: &str, errors: &mut Errors) {
    if let Some(key) = &args.retry_failed {
        errors.spanned(
            key,
            format_args!(
                "`retry_failed` retries the task's own `Err(e)`, and this task cannot fail: \
                 {because}; remove `retry_failed` (panics, crashes and timeouts are retried \
                 without it)"
            ),
        );
    }
}

/// The policy keys on an impl block: the impl may not set `const POLICY` too, and `retry_failed`
/// needs an error type other than `Never`.
fn policy_of_impl(args: &Args, task: &TaskImpl, errors: &mut Errors) {
    if !args.has_policy() {
        return;
    }
    let policy = task.item.items.iter().find_map(|item| match item {
        ImplItem::Const(item) if item.ident == "POLICY" => Some(&item.ident),
        _ => None,
    });
    if let Some(existing) = policy {
        errors.spanned(
            existing,
            "the impl sets `const POLICY` and the attribute gives policy keys; give the policy in \
             one place: remove the keys or the `const POLICY` item",
        );
    }
    let error = task.item.items.iter().find_map(|item| match item {
        ImplItem::Type(item) if item.ident == "Error" => Some(&item.ty),
        _ => None,
    });
    let is_never = |ty: &Type| match ty {
        Type::Path(TypePath { qself: None, path, .. }) => {
            path.segments.last().is_some_and(|last| last.ident == "Never")
        }
        _ => false,
    };
    if error.is_some_and(is_never) {
        infallible_retry_failed(args, "its `Error` is `Never`", errors);
    }
}

fn task_fn(task: &TaskFn, errors: &mut Errors) {
    let sig = &task.item.sig;
    if let syn::Safety::Unsafe(token) = &sig.safety {
        errors.spanned(
            token,
            "a task cannot be an `unsafe fn`: workers call it as a safe function; remove \
             `unsafe` and use an `unsafe` block inside",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(
            abi,
            format_args!("a task is a plain Rust function; remove `{}`", display(abi)),
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a task cannot be variadic; remove `...`");
    }
    generics(&sig.generics, Subject::Fn, errors);
    parameters(task, errors);
    if let ReturnType::Type(_, ty) = &sig.output
        && matches!(**ty, Type::Never(_))
    {
        errors.spanned(ty, "a task returns a value to its caller; return `()` instead of `!`");
        return;
    }
    match &task.output {
        Output::Unit => {}
        Output::Value(ty) => boundary_type(ty, Role::Output, errors),
        Output::Result { ok, err } => {
            boundary_type(ok, Role::Output, errors);
            boundary_type(err, Role::Error, errors);
        }
    }
}

fn parameters(task: &TaskFn, errors: &mut Errors) {
    let mut environment_seen = false;
    let mut progress_seen = false;
    let injected = task.injected().count();
    for (index, param) in task.params.iter().enumerate() {
        match param {
            Param::Receiver(receiver) => errors.spanned(
                receiver,
                "a task is a free function and cannot take `self`; pass the value as an \
                 argument, or put `#[task]` on an `impl Task for X` block instead",
            ),
            Param::Environment { ty, access } => {
                if environment_seen {
                    errors.spanned(
                        ty,
                        "a task gets one `Environment`; remove this second `Environment` parameter",
                    );
                } else if index >= injected {
                    errors.spanned(
                        ty,
                        "the `Environment` is injected, not sent; move it before the arguments",
                    );
                } else if access.is_none() {
                    errors.spanned(
                        ty,
                        "the `Environment` belongs to the worker and is lent to the task; \
                         take `&mut Environment`",
                    );
                }
                environment_seen = true;
            }
            Param::Progress { ty, access, message } => {
                if progress_seen {
                    errors.spanned(
                        ty,
                        "a task gets one `Progress`; remove this second `Progress` parameter",
                    );
                } else if index >= injected {
                    errors.spanned(
                        ty,
                        "the `Progress` is injected, not sent; move it before the arguments",
                    );
                } else if *access != Some(Access::Shared) {
                    errors.spanned(
                        ty,
                        format_args!(
                            "the `Progress` is lent to the task and sends through a shared \
                             reference; take `&Progress<{}>`",
                            display(message)
                        ),
                    );
                } else {
                    boundary_type(message, Role::Argument, errors);
                }
                progress_seen = true;
            }
            Param::Value { pat, ty } => {
                if ast::binding(pat).is_none() {
                    errors.spanned(
                        pat,
                        format_args!(
                            "each argument becomes a field of the task; bind the argument to a \
                             name, like `value: {}`, and destructure it in the body",
                            display(ty)
                        ),
                    );
                }
                boundary_type(ty, Role::Argument, errors);
            }
        }
    }
}

fn task_impl(args: &Args, task: &TaskImpl, errors: &mut Errors) {
    let item = &task.item;
    if let (Some(name), Some(existing)) = (&args.name, task.name_const()) {
        let key = &name.key;
        errors.spanned(
            key,
            "the impl already sets `const NAME`; give the name in one place: remove \
             `name = ...` here or the `const NAME` item",
        );
        errors.spanned(&existing.ident, "`NAME` is also set here");
    }
    if let Some(token) = &item.unsafety {
        errors.spanned(token, "`Task` is a safe trait; remove `unsafe`");
    }
    if let Some(token) = &item.modifiers.defaultness {
        errors.spanned(token, "a registered task is one concrete impl; remove `default`");
    }
    if let Some((path, _)) = &item.trait_ {
        if let Some(token) = &item.modifiers.polarity {
            errors.spanned(token, "a negative impl is not a task; remove `#[task]` or the `!`");
        } else if path.segments.last().is_none_or(|last| last.ident != "Task") {
            errors.spanned(
                path,
                format_args!(
                    "`#[task]` registers implementations of `parallel::Task`, not of `{}`; \
                     write `impl Task for X`",
                    display(path)
                ),
            );
        }
    }
    generics(&item.generics, Subject::Impl, errors);
    if task.self_ident().is_none() {
        errors.spanned(
            &item.self_ty,
            "`#[task]` registers a named type; implement `Task` for a struct or an enum",
        );
    }
}

/// What carries the generics being checked, for the wording of the message.
#[derive(Clone, Copy)]
enum Subject {
    Fn,
    Impl,
}

fn generics(generics: &syn::Generics, subject: Subject, errors: &mut Errors) {
    let because = match subject {
        Subject::Fn => {
            "a task cannot be generic: the worker must know the concrete types it deserializes"
        }
        Subject::Impl => "a registered task is one concrete type, which the worker finds by name",
    };
    for param in &generics.params {
        let message = match (param, subject) {
            (GenericParam::Lifetime(param), Subject::Fn) => format!(
                "a task cannot borrow: its arguments are sent to the worker; remove `{}` and \
                 take owned arguments",
                param.lifetime
            ),
            (GenericParam::Lifetime(param), Subject::Impl) => {
                format!("{because}; remove `{}`", param.lifetime)
            }
            (GenericParam::Type(param), Subject::Fn) => {
                format!("{because}; replace `{}` with a concrete type", param.ident)
            }
            (GenericParam::Const(param), Subject::Fn) => {
                format!("{because}; replace `{}` with a concrete value", param.ident)
            }
            (GenericParam::Type(param), Subject::Impl) => format!(
                "{because}; remove `{}` and register each concrete type with its own impl",
                param.ident
            ),
            (GenericParam::Const(param), Subject::Impl) => format!(
                "{because}; remove `{}` and register each concrete value with its own impl",
                param.ident
            ),
        };
        errors.spanned(param, message);
    }
    if let Some(where_clause) = &generics.where_clause {
        errors.spanned(
            where_clause,
            match subject {
                Subject::Fn => "a task cannot be generic; remove the `where` clause",
                Subject::Impl => {
                    "a registered task must be one concrete type; remove the `where` clause"
                }
            },
        );
    }
}

/// Which value crosses the worker boundary with a type, for the wording of the message.
#[derive(Clone, Copy)]
enum Role {
    Argument,
    Output,
    Error,
}

/// Records what the syntax of `ty` shows cannot cross the worker boundary: a borrow, a lifetime
/// other than `'static`, `impl Trait`, `!`.
fn boundary_type(ty: &Type, role: Role, errors: &mut Errors) {
    match ty {
        Type::Reference(reference) => borrowed(reference, role, errors),
        Type::ImplTrait(_) => errors.spanned(
            ty,
            match role {
                Role::Argument => {
                    "a task cannot take `impl Trait`: the worker must know the concrete type it \
                     deserializes; take a concrete type instead"
                }
                Role::Output | Role::Error => {
                    "a task cannot return `impl Trait`: the caller must know the concrete type \
                     it deserializes; return a concrete type instead"
                }
            },
        ),
        Type::Never(_) => errors.spanned(
            ty,
            match role {
                Role::Error => "write `parallel::Never` for an error that cannot happen",
                Role::Argument | Role::Output => "`!` cannot cross the worker boundary; use `()`",
            },
        ),
        Type::Path(TypePath { qself, path, .. }) => {
            if let Some(qself) = qself {
                boundary_type(&qself.ty, role, errors);
            }
            for segment in &path.segments {
                match &segment.arguments {
                    PathArguments::None => {}
                    PathArguments::AngleBracketed(arguments) => {
                        for argument in &arguments.args {
                            match argument {
                                GenericArgument::Type(ty) => boundary_type(ty, role, errors),
                                GenericArgument::Lifetime(lifetime) => {
                                    borrowed_lifetime(lifetime, errors)
                                }
                                GenericArgument::AssocType(assoc) => {
                                    boundary_type(&assoc.ty, role, errors)
                                }
                                _ => {}
                            }
                        }
                    }
                    PathArguments::Parenthesized(arguments) => {
                        for argument in &arguments.inputs {
                            boundary_type(&argument.ty, role, errors);
                        }
                    }
                }
            }
        }
        Type::Array(array) => boundary_type(&array.elem, role, errors),
        Type::Slice(slice) => boundary_type(&slice.elem, role, errors),
        Type::Paren(paren) => boundary_type(&paren.elem, role, errors),
        Type::Group(group) => boundary_type(&group.elem, role, errors),
        Type::Tuple(tuple) => {
            for elem in &tuple.elems {
                boundary_type(elem, role, errors);
            }
        }
        Type::TraitObject(object) => {
            for bound in &object.bounds {
                if let syn::TypeParamBound::Lifetime(lifetime) = bound {
                    borrowed_lifetime(lifetime, errors);
                }
            }
        }
        _ => {}
    }
}

fn borrowed(reference: &TypeReference, role: Role, errors: &mut Errors) {
    let owned = owned_alternative(&reference.elem);
    let message = match (role, owned) {
        (Role::Argument, Some(owned)) => {
            format!("borrowed arguments cannot cross the worker boundary; take `{owned}` instead")
        }
        (Role::Argument, None) if is_trait_object(&reference.elem) => {
            "borrowed arguments cannot cross the worker boundary; take an owned, concrete type \
             instead"
                .to_owned()
        }
        (Role::Argument, None) => format!(
            "borrowed arguments cannot cross the worker boundary; take `{}` by value instead",
            display(&reference.elem)
        ),
        (Role::Output | Role::Error, owned) => {
            let what = match role {
                Role::Output => "a borrowed output",
                _ => "a borrowed error",
            };
            match owned {
                Some(owned) => {
                    format!("{what} cannot cross the worker boundary; return `{owned}` instead")
                }
                None if is_trait_object(&reference.elem) => format!(
                    "{what} cannot cross the worker boundary; return an owned, concrete type \
                     instead"
                ),
                None => format!(
                    "{what} cannot cross the worker boundary; return `{}` by value instead",
                    display(&reference.elem)
                ),
            }
        }
    };
    errors.spanned(reference, message);
}

fn borrowed_lifetime(lifetime: &Lifetime, errors: &mut Errors) {
    if lifetime.ident != "static" {
        errors.spanned(
            lifetime,
            format_args!(
                "borrowed data cannot cross the worker boundary; use an owned type, or `'static` \
                 instead of `{lifetime}`"
            ),
        );
    }
}

/// The owned type to suggest for a borrowed `elem`: `String` for `str`, `Vec<T>` for `[T]`, and
/// so on; `None` when the suggestion is `elem` itself by value (or nothing, for `dyn Trait`).
fn owned_alternative(elem: &Type) -> Option<String> {
    match elem {
        Type::Slice(slice) => Some(format!("Vec<{}>", display(&slice.elem))),
        Type::Path(TypePath { qself: None, path, .. }) if path.segments.len() <= 3 => {
            let last = path.segments.last()?;
            if !last.arguments.is_empty() {
                return None;
            }
            let owned = match last.ident.to_string().as_str() {
                "str" => "String",
                "Path" => "PathBuf",
                "OsStr" => "OsString",
                "CStr" => "CString",
                _ => return None,
            };
            Some(owned.to_owned())
        }
        Type::Paren(paren) => owned_alternative(&paren.elem),
        Type::Group(group) => owned_alternative(&group.elem),
        _ => None,
    }
}

fn is_trait_object(ty: &Type) -> bool {
    matches!(ty, Type::TraitObject(_))
}

/// `tokens` as a person would write them: `Vec<u8>`, not `Vec < u8 >`.
fn display(tokens: impl ToTokens) -> String {
    let mut text = quote!(#tokens).to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        ("[ ", "["),
        (" ]", "]"),
        ("( ", "("),
        (" )", ")"),
        (" ;", ";"),
    ] {
        text = text.replace(from, to);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suggestion(ty: &str) -> Option<String> {
        let Type::Reference(reference) = syn::parse_str::<Type>(ty).unwrap() else {
            panic!("{ty} is not a reference");
        };
        owned_alternative(&reference.elem)
    }

    #[test]
    fn suggests_the_owned_form_of_common_borrows() {
        assert_eq!(suggestion("&str").as_deref(), Some("String"));
        assert_eq!(suggestion("&'static str").as_deref(), Some("String"));
        assert_eq!(suggestion("&mut [Vec<u8>]").as_deref(), Some("Vec<Vec<u8>>"));
        assert_eq!(suggestion("&std::path::Path").as_deref(), Some("PathBuf"));
        assert_eq!(suggestion("&Config"), None);
    }

    #[test]
    fn displays_types_as_written() {
        let ty: Type =
            syn::parse_str("std::collections::HashMap<String, Vec<(u8, &'a str)>>").unwrap();
        assert_eq!(display(&ty), "std::collections::HashMap<String, Vec<(u8, &'a str)>>");
        let ty: Type = syn::parse_str("&mut [u8; 4]").unwrap();
        assert_eq!(display(&ty), "&mut [u8; 4]");
    }
}
