//! The typed model of what `#[task]` is attached to: a task function or a task `impl` block.
//!
//! Parsing decides what each piece *is* (the injected `Environment`, an argument, a receiver; a
//! fallible or infallible output) without judging it; `check` judges. The only mistake found here
//! is an item that is neither a function nor an `impl ... for` block, since nothing can be
//! modelled from it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{
    FnArg, GenericArgument, Ident, ImplItem, ImplItemConst, Item, ItemFn, ItemImpl, Pat, PatIdent,
    PathArguments, Receiver, ReturnType, Type, TypePath, TypeReference,
};

/// What the attribute is attached to.
pub(crate) enum Input {
    /// `#[task] fn name(...)`.
    Fn(TaskFn),
    /// `#[task] impl Task for X { ... }`.
    Impl(TaskImpl),
}

/// A function to be turned into a task.
pub(crate) struct TaskFn {
    /// The function as the user wrote it; emitted unchanged.
    pub(crate) item: ItemFn,
    /// Its parameters, in order.
    pub(crate) params: Vec<Param>,
    /// What it returns.
    pub(crate) output: Output,
}

/// One parameter of a task function.
pub(crate) enum Param {
    /// `self`, `&self`, ...: never valid on a task.
    Receiver(Receiver),
    /// A parameter whose type is `Environment` (by path's last segment), by reference or not.
    Environment {
        /// The whole parameter type, for error spans.
        ty: Box<Type>,
        /// How it is borrowed; `None` when taken by value.
        access: Option<Access>,
    },
    /// A parameter whose type is `Progress<P>` (by path's last segment, with one type argument),
    /// by reference or not.
    Progress {
        /// The whole parameter type, for error spans.
        ty: Box<Type>,
        /// How it is borrowed; `None` when taken by value.
        access: Option<Access>,
        /// `P`: what the task sends.
        message: Box<Type>,
    },
    /// An argument that travels to the worker inside the task value.
    Value {
        /// The argument's pattern as written.
        pat: Box<Pat>,
        /// The argument's type as written.
        ty: Box<Type>,
    },
}

/// How an injected parameter (`Environment`, `Progress`) is borrowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `&Environment`.
    Shared,
    /// `&mut Environment`.
    Mut,
}

/// What a task function returns.
pub(crate) enum Output {
    /// No return type: the output is `()`.
    Unit,
    /// Any type other than a two-argument `Result`: an infallible task with this output.
    Value(Box<Type>),
    /// `Result<T, E>`: a fallible task with output `T` and error `E`.
    Result {
        /// `T`.
        ok: Box<Type>,
        /// `E`.
        err: Box<Type>,
    },
}

/// A hand-written `impl Task for X` block to be registered.
pub(crate) struct TaskImpl {
    /// The impl block as the user wrote it.
    pub(crate) item: ItemImpl,
}

impl TaskFn {
    /// The function's name, which also names the generated module.
    pub(crate) fn ident(&self) -> &Ident {
        &self.item.sig.ident
    }

    /// The injected `Environment` parameter, if it is well-formed and before the arguments.
    #[cfg(test)]
    pub(crate) fn environment(&self) -> Option<Access> {
        self.injected().find_map(|param| match param {
            Param::Environment { access, .. } => *access,
            _ => None,
        })
    }

    /// `P` of the injected `&Progress<P>` parameter, if it is before the arguments.
    pub(crate) fn progress(&self) -> Option<&Type> {
        self.injected().find_map(|param| match param {
            Param::Progress { message, .. } => Some(&**message),
            _ => None,
        })
    }

    /// The parameters before the first argument: where injected ones belong, in either order.
    pub(crate) fn injected(&self) -> impl Iterator<Item = &Param> {
        self.params
            .iter()
            .take_while(|param| matches!(param, Param::Environment { .. } | Param::Progress { .. }))
    }

    /// Whether it takes `self`: a method, which `check` rejects.
    pub(crate) fn has_receiver(&self) -> bool {
        self.params.iter().any(|param| matches!(param, Param::Receiver(_)))
    }

    /// The arguments that travel in the task value: name and type, in order.
    ///
    /// Arguments whose pattern is not a plain name are skipped; `check` reports them.
    pub(crate) fn arguments(&self) -> impl Iterator<Item = (&Ident, &Type)> {
        self.params.iter().filter_map(|param| match param {
            Param::Value { pat, ty } => Some((binding(pat)?, &**ty)),
            _ => None,
        })
    }
}

impl TaskImpl {
    /// The `const NAME` item the impl writes, if any.
    pub(crate) fn name_const(&self) -> Option<&ImplItemConst> {
        self.item.items.iter().find_map(|item| match item {
            ImplItem::Const(item) if item.ident == "NAME" => Some(item),
            _ => None,
        })
    }

    /// The last segment of the self type's path: `X` in `impl Task for some::X`.
    pub(crate) fn self_ident(&self) -> Option<&Ident> {
        match &*self.item.self_ty {
            Type::Path(TypePath { qself: None, path, .. }) => {
                path.segments.last().map(|s| &s.ident)
            }
            _ => None,
        }
    }
}

/// The name a parameter pattern binds, when it is a plain name (`a`, `mut a`).
pub(crate) fn binding(pat: &Pat) -> Option<&Ident> {
    match pat {
        Pat::Ident(PatIdent { ident, subpat: None, by_ref: None, .. }) => Some(ident),
        _ => None,
    }
}

/// Parses the item under the attribute.
///
/// # Errors
///
/// When the item is not a function or an `impl ... for` block, with a message saying where
/// `#[task]` goes.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Input> {
    match syn::parse2::<Item>(tokens)? {
        Item::Fn(item) => Ok(Input::Fn(parse_fn(item))),
        Item::Impl(item) if item.trait_.is_some() => Ok(Input::Impl(TaskImpl { item })),
        Item::Impl(item) => {
            let impl_token = item.impl_token;
            let self_ty = &item.self_ty;
            Err(syn::Error::new_spanned(
                quote!(#impl_token #self_ty),
                "`#[task]` on an impl block registers a hand-written task: \
                 write `impl Task for X`, not an inherent impl",
            ))
        }
        other => Err(syn::Error::new_spanned(
            item_keyword(&other),
            format_args!(
                "`#[task]` goes on a `fn` or on an `impl Task for X` block, not on {}",
                item_kind(&other)
            ),
        )),
    }
}

fn parse_fn(item: ItemFn) -> TaskFn {
    let params = item
        .sig
        .inputs
        .iter()
        .map(|input| match input {
            FnArg::Receiver(receiver) => Param::Receiver(receiver.clone()),
            FnArg::Typed(typed) => match (environment_access(&typed.ty), progress(&typed.ty)) {
                (Some(access), _) => Param::Environment { ty: typed.ty.clone(), access },
                (None, Some((access, message))) => Param::Progress {
                    ty: typed.ty.clone(),
                    access,
                    message: Box::new(message.clone()),
                },
                (None, None) => Param::Value { pat: typed.pat.clone(), ty: typed.ty.clone() },
            },
        })
        .collect();
    let output = match &item.sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => match result_arguments(ty) {
            Some((ok, err)) => {
                Output::Result { ok: Box::new(ok.clone()), err: Box::new(err.clone()) }
            }
            None => Output::Value(ty.clone()),
        },
    };
    TaskFn { item, params, output }
}

/// `Some(access)` when `ty` is an `Environment` parameter: `Some(None)` by value,
/// `Some(Some(_))` by reference; `None` when it is not an `Environment` at all.
fn environment_access(ty: &Type) -> Option<Option<Access>> {
    match ty {
        Type::Reference(TypeReference { elem, mutability, .. }) if is_environment(elem) => {
            Some(Some(if mutability.is_some() { Access::Mut } else { Access::Shared }))
        }
        Type::Paren(inner) => environment_access(&inner.elem),
        Type::Group(inner) => environment_access(&inner.elem),
        ty if is_environment(ty) => Some(None),
        _ => None,
    }
}

/// `Some((access, P))` when `ty` is a `Progress<P>` parameter, by value or by reference.
fn progress(ty: &Type) -> Option<(Option<Access>, &Type)> {
    match ty {
        Type::Reference(TypeReference { elem, mutability, .. }) => {
            let access = if mutability.is_some() { Access::Mut } else { Access::Shared };
            progress_message(elem).map(|message| (Some(access), message))
        }
        Type::Paren(inner) => progress(&inner.elem),
        Type::Group(inner) => progress(&inner.elem),
        ty => progress_message(ty).map(|message| (None, message)),
    }
}

/// `P` when `ty` is a path whose last segment is `Progress<P>`, with exactly one type argument.
fn progress_message(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(TypePath { qself: None, path, .. }) => {
            let last = path.segments.last()?;
            if last.ident != "Progress" {
                return None;
            }
            let PathArguments::AngleBracketed(arguments) = &last.arguments else {
                return None;
            };
            match (arguments.args.len(), arguments.args.first()) {
                (1, Some(GenericArgument::Type(message))) => Some(message),
                _ => None,
            }
        }
        Type::Paren(inner) => progress_message(&inner.elem),
        Type::Group(inner) => progress_message(&inner.elem),
        _ => None,
    }
}

fn is_environment(ty: &Type) -> bool {
    match ty {
        Type::Path(TypePath { qself: None, path, .. }) => path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Environment" && last.arguments.is_empty()),
        Type::Paren(inner) => is_environment(&inner.elem),
        Type::Group(inner) => is_environment(&inner.elem),
        _ => false,
    }
}

/// `(T, E)` when `ty` is a path whose last segment is `Result` with exactly two type arguments.
fn result_arguments(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(TypePath { qself: None, path, .. }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    let mut types = arguments.args.iter().map(|argument| match argument {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(Some(ok)), Some(Some(err)), None) => Some((ok, err)),
        _ => None,
    }
}

/// The keyword and name of an item (`struct Resize`), where a misplaced `#[task]` error points.
fn item_keyword(item: &Item) -> TokenStream {
    match item {
        Item::Const(item) => {
            let (token, ident) = (item.const_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Enum(item) => {
            let (token, ident) = (item.enum_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Mod(item) => {
            let (token, ident) = (item.mod_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Static(item) => {
            let (token, ident) = (item.static_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Struct(item) => {
            let (token, ident) = (item.struct_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Trait(item) => {
            let (token, ident) = (item.trait_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Type(item) => {
            let (token, ident) = (item.type_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Union(item) => {
            let (token, ident) = (item.union_token, &item.ident);
            quote!(#token #ident)
        }
        Item::Use(item) => {
            let token = item.use_token;
            quote!(#token)
        }
        other => quote!(#other),
    }
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::Const(_) => "a const",
        Item::Enum(_) => "an enum",
        Item::ExternCrate(_) => "an `extern crate`",
        Item::ForeignMod(_) => "an `extern` block",
        Item::Macro(_) => "a macro",
        Item::Mod(_) => "a module",
        Item::Static(_) => "a static",
        Item::Struct(_) => "a struct",
        Item::Trait(_) | Item::TraitAlias(_) => "a trait",
        Item::Type(_) => "a type alias",
        Item::Union(_) => "a union",
        Item::Use(_) => "a `use`",
        _ => "this item",
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn task_fn(tokens: TokenStream) -> TaskFn {
        match parse(tokens) {
            Ok(Input::Fn(task)) => task,
            _ => panic!("not a task fn"),
        }
    }

    #[test]
    fn finds_the_environment_and_the_arguments() {
        let task = task_fn(quote!(
            fn f(env: &mut parallel::Environment, a: u8, mut b: String) {}
        ));
        assert!(task.environment() == Some(Access::Mut));
        let names: Vec<String> = task.arguments().map(|(name, _)| name.to_string()).collect();
        assert_eq!(names, ["a", "b"]);

        let task = task_fn(quote!(
            fn f(env: &Environment) {}
        ));
        assert!(task.environment() == Some(Access::Shared));
        let task = task_fn(quote!(
            fn f(a: u8, env: &mut Environment) {}
        ));
        assert!(task.environment().is_none(), "only a parameter before the arguments is injected");
    }

    #[test]
    fn finds_the_progress_in_either_order() {
        let task = task_fn(quote!(
            fn f(progress: &Progress<String>, env: &mut Environment, a: u8) {}
        ));
        assert!(task.environment() == Some(Access::Mut));
        assert_eq!(task.progress().map(|p| quote!(#p).to_string()), Some("String".to_owned()));
        assert_eq!(task.arguments().count(), 1);

        let task = task_fn(quote!(
            fn f(env: &mut Environment, progress: &parallel::Progress<Vec<u8>>) {}
        ));
        assert!(task.progress().is_some() && task.environment().is_some());

        let task = task_fn(quote!(
            fn f(a: u8, progress: &Progress<u8>) {}
        ));
        assert!(task.progress().is_none(), "only a parameter before the arguments is injected");

        // Without its type argument, a `Progress` is the user's own type, sent as an argument.
        let task = task_fn(quote!(
            fn f(progress: Progress) {}
        ));
        assert_eq!(task.arguments().count(), 1);
        assert!(matches!(
            task_fn(quote!(
                fn f(progress: Progress<u8>) {}
            ))
            .params[0],
            Param::Progress { access: None, .. }
        ));
    }

    #[test]
    fn a_two_argument_result_is_fallible() {
        assert!(matches!(
            task_fn(quote!(
                fn f() {}
            ))
            .output,
            Output::Unit
        ));
        assert!(matches!(
            task_fn(quote!(
                fn f() -> std::result::Result<u8, String> {}
            ))
            .output,
            Output::Result { .. }
        ));
        assert!(matches!(
            task_fn(quote!(
                fn f() -> io::Result<u8> {}
            ))
            .output,
            Output::Value(_)
        ));
        assert!(matches!(
            task_fn(quote!(
                fn f() -> Option<u8> {}
            ))
            .output,
            Output::Value(_)
        ));
    }

    #[test]
    fn says_where_the_attribute_goes() {
        let error = parse(quote!(
            struct S;
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("not on a struct"), "{error}");
        let error = parse(quote!(impl S {})).err().unwrap().to_string();
        assert!(error.contains("not an inherent impl"), "{error}");
        assert!(matches!(parse(quote!(impl Task for S {})), Ok(Input::Impl(_))));
    }
}
