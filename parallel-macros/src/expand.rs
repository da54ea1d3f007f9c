//! Generates the code of a checked task: the module beside a task function, or the registration
//! beside a task `impl` block.
//!
//! Everything generated reaches the runtime through `<root>::__private` with absolute paths
//! (`root` is `::parallel` unless `#[task(crate = path)]` says otherwise), never through the
//! user's imports. Identifiers that are not part of the public contract start with `__parallel_`.
//! Argument, output and error types are asserted to cross the worker boundary with the user's
//! own type tokens as the span, so that an unsatisfied bound points at the offending type.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{parse_quote, Generics, Path, PathSegment, Type, VisRestricted, Visibility};

use crate::ast::{Access, Input, Output, Param, TaskFn, TaskImpl};
use crate::attr::Args;

/// The code for a checked `input`.
pub(crate) fn input(args: &Args, input: &Input) -> TokenStream {
    match input {
        Input::Fn(task) => task_fn(args, task),
        Input::Impl(task) => task_impl(args, task),
    }
}

/// The user's function, its `impl Task`, then `mod NAME` with `Task`, `new`, `dispatch`,
/// `dispatch_on` and the registration.
///
/// The `impl Task` — the one item that calls the function — stands beside the function rather
/// than inside `mod NAME`, so that it names the function (and the output and error types) as the
/// function's own scope does, with no `super::`. That is what lets `#[task]` work on a function
/// declared in a block (a `fn main` body, a test): `super::` from a module declared in a block
/// is the enclosing module, which cannot see the block's items. What stays in `mod NAME` names
/// only the argument types, through `use super::*`.
fn task_fn(args: &Args, task: &TaskFn) -> TokenStream {
    let item = &task.item;
    let ident = task.ident();
    // The `impl Task` is emitted where the function is, and uses the paths as written.
    let private_here = {
        let root = root(args);
        quote!(#root::__private)
    };
    // Everything in `mod NAME` is emitted one module down, and says so in its paths.
    let root = one_module_down(&root(args));
    let private = quote!(#root::__private);
    let serde_crate = format!("{}::__private::serde", path_text(&root));
    let vis = &item.vis;
    let inner_vis = one_module_up(vis);
    let cfgs: Vec<_> = item.attrs.iter().filter(|attr| attr.path().is_ident("cfg")).collect();
    let (names, types): (Vec<&Ident>, Vec<Type>) =
        task.arguments().map(|(name, ty)| (name, type_one_module_down(ty))).unzip();

    let name = match &args.name {
        Some(name) => name.value.to_token_stream(),
        // The module's path followed by `::NAME`, as `module_path!()` inside `mod NAME` says it
        // (a raw identifier keeps its `r#`). A function in a block has the path of the module
        // around the block.
        None => {
            let ident = ident.to_string();
            quote!(#private_here::concat!(#private_here::module_path!(), "::", #ident))
        }
    };
    let (output, error) = match &task.output {
        Output::Unit => (quote!(()), quote!(#private_here::Never)),
        Output::Value(ty) => (quote!(#ty), quote!(#private_here::Never)),
        Output::Result { ok, err } => (quote!(#ok), quote!(#err)),
    };
    // Where the task type is named, it carries the function's name as its span: an error about
    // the task value as a whole (a field that is not `Send`) then points at the function, once.
    let task_ty = quote_spanned!(ident.span()=> Task);
    let checks = checks(&private, &types);
    let (field_attrs, serde_glue) = argument_serde(&private, &types);
    let run = run_method(&private_here, task, &names);
    let is_async = task.item.sig.asyncness.map(|_| {
        quote!(
            const ASYNC: bool = true;
        )
    });
    let policy = policy_const(&private_here, args);
    let progress = match task.progress() {
        Some(message) => quote!(#message),
        None => quote!(#private_here::Never),
    };
    let signature = {
        let arguments =
            task.arguments().map(|(name, ty)| format!("{}: {}", unraw(name), tokens(ty)));
        let text = format!(
            "fn({}) -> Result<{}, {}>, progress {}",
            arguments.collect::<Vec<_>>().join(", "),
            tokens(&output),
            tokens(&error),
            tokens(&progress)
        );
        quote!(const SIGNATURE: &'static str = #text;)
    };
    // `P` crosses the boundary like an argument: the boundary check's message, at `P` (after the
    // complaints of `Task::Progress`'s own bounds, which the compiler reports first).
    let progress_check = task.progress().map(|message| {
        let message = type_one_module_down(message);
        quote_spanned! {message.span()=>
            const _: () = {
                let _ = #private::assert_crosses_boundary::<#message>;
            };
        }
    });
    let field_docs =
        names.iter().map(|name| format!("Argument `{}` of [`{ident}`](fn@{ident}).", unraw(name)));
    let Docs { module_doc, task_doc, new_doc, dispatch_doc, dispatch_on_doc } = Docs::of(ident);

    quote! {
        #item

        #(#cfgs)*
        #[doc = #module_doc]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            #checks
            #progress_check

            #[doc = #task_doc]
            #[derive(#private::serde::Serialize, #private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #inner_vis struct #task_ty {
                #(
                    #[doc = #field_docs]
                    #field_attrs
                    #inner_vis #names: #types,
                )*
            }

            #serde_glue

            #[doc = #new_doc]
            #[allow(dead_code)]
            #inner_vis fn new(#(#names: #types),*) -> #task_ty {
                #task_ty { #(#names),* }
            }

            #[doc = #dispatch_doc]
            #[allow(dead_code)]
            #[track_caller]
            #inner_vis fn dispatch(#(#names: #types),*) -> #private::TaskHandle<#task_ty> {
                #private::default_pool().submit(#task_ty { #(#names),* })
            }

            #[doc = #dispatch_on_doc]
            #[allow(dead_code)]
            #inner_vis fn dispatch_on(
                __parallel_pool: &#private::Pool,
                #(#names: #types),*
            ) -> #private::TaskHandle<#task_ty> {
                __parallel_pool.submit(#task_ty { #(#names),* })
            }

            const _: () = {
                #[#private::linkme::distributed_slice(#private::TASKS)]
                #[linkme(crate = #private::linkme)]
                static __PARALLEL_REGISTRATION: #private::Registration =
                    #private::Registration::of::<#task_ty>();
            };
        }

        // After the module, so that its checks of the argument types come first.
        #(#cfgs)*
        const _: () = {
            impl #private_here::Task for #ident::#task_ty {
                type Output = #output;
                type Error = #error;
                type Progress = #progress;
                const NAME: &'static str = #name;
                #signature
                #is_async
                #policy

                #run
            }
        };
    }
}

/// The assertions that argument types cross the worker boundary, emitted first in the module so
/// that the first error a user sees is about their own type, at that type.
///
/// `Send` is checked apart and earliest, through an associated type whose bound the compiler
/// checks before any function body: otherwise the first complaint would be the `Send` bound of
/// `impl Task`, about the task as a whole. Serde's half goes through
/// `assert_crosses_boundary`, whose message explains the rule. Outputs and errors need neither:
/// `Task`'s bounds on `Output` and `Error` already report them at their types, first.
fn checks(private: &TokenStream, types: &[Type]) -> TokenStream {
    if types.is_empty() {
        return TokenStream::new();
    }
    let indices = 0..types.len();
    let assertions = types.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            let _ = #private::assert_crosses_boundary::<#ty>;
        }
    });
    quote! {
        #[allow(dead_code, non_camel_case_types)]
        struct __parallel_Check;

        #(
            impl #private::SendArgument<#indices> for __parallel_Check {
                type Type = #types;
            }
        )*

        const _: () = {
            #(#assertions)*
        };
    }
}

/// The `#[serde(...)]` attribute of each argument's field, and the functions they name.
///
/// Each argument goes through serde by autoref dispatch (see `__private::SerializeArgument`):
/// for a type that is not serde, the derive then compiles anyway and the only complaint is
/// `assert_crosses_boundary`'s, at the type, instead of a handful from inside the derive that
/// point at the attribute.
fn argument_serde(private: &TokenStream, types: &[Type]) -> (Vec<TokenStream>, TokenStream) {
    let serializers: Vec<Ident> =
        (0..types.len()).map(|index| format_ident!("__parallel_serialize_{index}")).collect();
    let deserializers: Vec<Ident> =
        (0..types.len()).map(|index| format_ident!("__parallel_deserialize_{index}")).collect();
    let attrs = serializers
        .iter()
        .zip(&deserializers)
        .map(|(serializer, deserializer)| {
            let (serializer, deserializer) = (serializer.to_string(), deserializer.to_string());
            quote!(#[serde(serialize_with = #serializer, deserialize_with = #deserializer)])
        })
        .collect();
    let functions = quote! {
        #(
            fn #serializers<__ParallelSerializer: #private::serde::Serializer>(
                __parallel_value: &#types,
                __parallel_serializer: __ParallelSerializer,
            ) -> #private::Result<__ParallelSerializer::Ok, __ParallelSerializer::Error> {
                #[allow(unused_imports)]
                use #private::{SerializeArgument as _, SerializeArgumentFallback as _};
                (&#private::Outgoing(__parallel_value)).serialize_argument(__parallel_serializer)
            }

            fn #deserializers<
                '__parallel_de,
                __ParallelDeserializer: #private::serde::Deserializer<'__parallel_de>,
            >(
                __parallel_deserializer: __ParallelDeserializer,
            ) -> #private::Result<#types, __ParallelDeserializer::Error> {
                #[allow(unused_imports)]
                use #private::{DeserializeArgument as _, DeserializeArgumentFallback as _};
                (&#private::Incoming::<#types>::NEW).deserialize_argument(__parallel_deserializer)
            }
        )*
    };
    (attrs, functions)
}

/// `Task::run`: calls the user's function with the environment, if it takes one, and the
/// fields, wrapping an infallible function's value in `Ok`.
fn run_method(private: &TokenStream, task: &TaskFn, names: &[&Ident]) -> TokenStream {
    let ident = task.ident();
    // The injected parameters in the order written, then the fields.
    let injected = task.injected().map(|param| match param {
        Param::Environment { access: Some(Access::Shared), .. } => quote!(&*__parallel_env,),
        Param::Environment { .. } => quote!(__parallel_env,),
        _ => quote!(&__parallel_progress,),
    });
    let mut call = quote!(#ident(#(#injected)* #(self.#names),*));
    if let Some(token) = &task.item.sig.asyncness {
        // Spanned at `async`: a build without the `tokio` feature is told so there.
        let block_on = respan(quote!(#private::block_on::<#private::AsyncTasks, _>), token.span);
        call = quote!(#block_on(#call));
    }
    let mut body = match &task.output {
        Output::Result { .. } => call,
        Output::Unit | Output::Value(_) => quote!(#private::Result::Ok(#call)),
    };
    if task.progress().is_some() {
        // Taken before the call (and before an `async fn`'s future starts): the sender lent to
        // this run on this thread.
        body = quote! {
            let __parallel_progress = #private::Progress::<Self::Progress>::current();
            #body
        };
    }
    // Spanned at the function's name, like the task type: the compiler points at the signature
    // when the task as a whole is not `Send`, and must not point at the attribute.
    let signature = respan(
        quote! {
            fn run(
                self,
                __parallel_env: &mut #private::Environment,
            ) -> #private::Result<Self::Output, Self::Error>
        },
        ident.span(),
    );
    let mut body = Group::new(Delimiter::Brace, body);
    body.set_span(ident.span());
    quote!(#signature #body)
}

/// `const POLICY` from the attribute's policy keys; nothing without them (the trait's default).
fn policy_const(private: &TokenStream, args: &Args) -> TokenStream {
    if !args.has_policy() {
        return TokenStream::new();
    }
    let duration = |duration: std::time::Duration| {
        let (secs, nanos) = (duration.as_secs(), duration.subsec_nanos());
        quote!(#private::Duration::new(#secs, #nanos))
    };
    let timeout = args.timeout.map(|timeout| {
        let timeout = duration(timeout);
        quote!(.with_timeout(#timeout))
    });
    let retries = args.retries.map(|retries| quote!(.with_retries(#retries)));
    let backoff = args.backoff.map(|backoff| {
        let backoff = duration(backoff);
        quote!(.with_backoff(#backoff))
    });
    let retry_failed = args.retry_failed.as_ref().map(|_| quote!(.with_retry_failed()));
    quote! {
        const POLICY: #private::Policy =
            #private::Policy::new() #timeout #retries #backoff #retry_failed;
    }
}

/// The short docs of the generated items, so that a crate denying `missing_docs` still builds.
pub(crate) struct Docs {
    pub(crate) module_doc: String,
    pub(crate) task_doc: String,
    pub(crate) new_doc: String,
    pub(crate) dispatch_doc: String,
    pub(crate) dispatch_on_doc: String,
}

impl Docs {
    pub(crate) fn of(ident: &Ident) -> Docs {
        let function = format!("[`{}`](fn@{ident})", unraw(ident));
        Docs {
            module_doc: format!(
                "The task that runs {function} on a worker, generated by `#[task]`: \
                 [`Task`]({ident}::Task) holds its arguments, [`new`]({ident}::new) builds one, \
                 [`dispatch`]({ident}::dispatch) and [`dispatch_on`]({ident}::dispatch_on) run \
                 one."
            ),
            task_doc: format!(
                "The arguments of {function}: the value sent to a worker to run it there."
            ),
            new_doc: format!(
                "Builds the task that runs {function} with these arguments, for `Pool::submit` \
                 or `Pool::map`."
            ),
            dispatch_doc: format!("Runs {function} as a task on the default pool."),
            dispatch_on_doc: format!("Runs {function} as a task on the given pool."),
        }
    }
}

/// The user's impl block, with `const NAME` filled in when it is left out, then its registration.
fn task_impl(args: &Args, task: &TaskImpl) -> TokenStream {
    let root = root(args);
    let private = quote!(#root::__private);
    let mut item = task.item.clone();
    if task.name_const().is_none() {
        let name = match (&args.name, task.self_ident()) {
            (Some(name), _) => name.value.to_token_stream(),
            (None, Some(self_ident)) => {
                let self_name = unraw(self_ident);
                quote!(#private::concat!(#private::module_path!(), "::", #self_name))
            }
            // `check` rejects a self type without a name.
            (None, None) => quote!(#private::module_path!()),
        };
        item.items.push(parse_quote! {
            const NAME: &'static str = #name;
        });
    }
    if args.has_policy() {
        let policy = policy_const(&private, args);
        item.items.push(parse_quote!(#policy));
    }
    fill_progress(&private, &mut item);
    fill_signature(&mut item);
    let self_ty = &item.self_ty;
    let cfgs = item.attrs.iter().filter(|attr| attr.path().is_ident("cfg"));
    quote! {
        #item

        #(#cfgs)*
        const _: () = {
            #[#private::linkme::distributed_slice(#private::TASKS)]
            #[linkme(crate = #private::linkme)]
            static __PARALLEL_REGISTRATION: #private::Registration =
                #private::Registration::of::<#self_ty>();
        };
    }
}

/// Writes `type Progress = Never` into an `impl Task` block that leaves it out: associated type
/// defaults are unstable, and a task that reports nothing should not have to say so.
pub(crate) fn fill_progress(private: &TokenStream, item: &mut syn::ItemImpl) {
    let is_task = item
        .trait_
        .as_ref()
        .and_then(|(path, _)| path.segments.last())
        .is_some_and(|last| last.ident == "Task");
    let has_progress = item
        .items
        .iter()
        .any(|item| matches!(item, syn::ImplItem::Type(ty) if ty.ident == "Progress"));
    if is_task && !has_progress {
        item.items.push(parse_quote! {
            type Progress = #private::Never;
        });
    }
}

/// Writes `const SIGNATURE` into an `impl Task` block: its self type and associated types as
/// written (the fields of the self type are out of the attribute's sight).
fn fill_signature(item: &mut syn::ItemImpl) {
    let has_signature = item
        .items
        .iter()
        .any(|item| matches!(item, syn::ImplItem::Const(c) if c.ident == "SIGNATURE"));
    if has_signature {
        return;
    }
    let mut text = format!("impl {}", tokens(&item.self_ty));
    for associated in &item.items {
        if let syn::ImplItem::Type(ty) = associated {
            text.push_str(&format!(", {} = {}", ty.ident, tokens(&ty.ty)));
        }
    }
    item.items.push(parse_quote! {
        const SIGNATURE: &'static str = #text;
    });
}

/// The tokens of `item` as text, with the spacing of `proc_macro2`'s printing, which is the same
/// for the same tokens whatever their layout in the source.
fn tokens(item: &impl ToTokens) -> String {
    item.to_token_stream().to_string()
}

/// The path to the runtime as seen from the item's own module.
pub(crate) fn root(args: &Args) -> Path {
    match &args.krate {
        Some(path) => path.clone(),
        None => parse_quote!(::parallel),
    }
}

/// `path`, written in some module, rewritten to mean the same from a child of that module.
///
/// Absolute paths (`::a`, `crate::a`) and bare names (found through the child's `use super::*`
/// or the extern prelude) stay as they are; `self::a` becomes `super::a` and `super::a` becomes
/// `super::super::a`.
pub(crate) fn one_module_down(path: &Path) -> Path {
    let mut path = path.clone();
    if path.leading_colon.is_some() {
        return path;
    }
    let Some(first) = path.segments.first_mut() else {
        return path;
    };
    if first.ident == "self" {
        first.ident = Ident::new("super", first.ident.span());
    } else if first.ident == "super" {
        let span = first.ident.span();
        path.segments.insert(0, PathSegment::from(Ident::new("super", span)));
    }
    path
}

/// `ty`, written in some module, rewritten to mean the same inside `mod NAME` declared there:
/// every path in it goes [`one_module_down`], and a path starting with `Task` (the user's own
/// type, which the generated `Task` would shadow) is reached through `super::`.
pub(crate) fn type_one_module_down(ty: &Type) -> Type {
    let mut ty = ty.clone();
    OneModuleDown.visit_type_mut(&mut ty);
    ty
}

/// `generics`, written on a function in some module, rewritten to mean the same on a function
/// inside `mod NAME` declared there: every path in their bounds goes one module down, as in
/// [`type_one_module_down`].
pub(crate) fn generics_one_module_down(generics: &Generics) -> Generics {
    let mut generics = generics.clone();
    OneModuleDown.visit_generics_mut(&mut generics);
    generics
}

/// Rewrites every path it visits to mean the same one module down.
struct OneModuleDown;

impl VisitMut for OneModuleDown {
    fn visit_path_mut(&mut self, path: &mut Path) {
        let is_users_task = path.leading_colon.is_none()
            && path.segments.first().is_some_and(|first| first.ident == "Task");
        if is_users_task {
            let span = path.segments[0].ident.span();
            path.segments.insert(0, PathSegment::from(Ident::new("super", span)));
        } else {
            *path = one_module_down(path);
        }
        visit_mut::visit_path_mut(self, path);
    }
}

/// The visibility that items inside `mod NAME` need so that they are visible wherever a `NAME`
/// with visibility `vis` is: private becomes `pub(super)`, `pub(super)` becomes
/// `pub(in super::super)`, and so on; `pub` and `pub(crate)` stay as they are.
pub(crate) fn one_module_up(vis: &Visibility) -> TokenStream {
    match vis {
        Visibility::Public(token) => quote!(#token),
        Visibility::Inherited => quote!(pub(super)),
        Visibility::Restricted(VisRestricted { pub_token, path, .. }) => {
            let path = one_module_down(path);
            if path.is_ident("crate") || path.is_ident("super") {
                quote!(#pub_token(#path))
            } else {
                quote!(#pub_token(in #path))
            }
        }
    }
}

/// `tokens` with every span, inside groups too, set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// A path as text, for the `crate = "..."` option of serde, which takes a string.
pub(crate) fn path_text(path: &Path) -> String {
    let segments: Vec<String> =
        path.segments.iter().map(|segment| segment.ident.to_string()).collect();
    let leading = if path.leading_colon.is_some() { "::" } else { "" };
    format!("{leading}{}", segments.join("::"))
}

/// An identifier as a user reads it: `type`, not `r#type`.
fn unraw(ident: &Ident) -> String {
    ident.unraw().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vis(text: &str) -> String {
        one_module_up(&syn::parse_str(text).unwrap()).to_string().replace(' ', "")
    }

    fn down(text: &str) -> String {
        let path = one_module_down(&syn::parse_str(text).unwrap());
        quote!(#path).to_string().replace(' ', "")
    }

    #[test]
    fn items_inside_the_module_are_visible_where_the_function_is() {
        assert_eq!(vis(""), "pub(super)");
        assert_eq!(vis("pub(self)"), "pub(super)");
        assert_eq!(vis("pub"), "pub");
        assert_eq!(vis("pub(crate)"), "pub(crate)");
        assert_eq!(vis("pub(super)"), "pub(insuper::super)");
        assert_eq!(vis("pub(in crate::a)"), "pub(incrate::a)");
        assert_eq!(vis("pub(in super::a)"), "pub(insuper::super::a)");
    }

    #[test]
    fn paths_keep_their_meaning_one_module_down() {
        assert_eq!(down("::parallel"), "::parallel");
        assert_eq!(down("crate::rt"), "crate::rt");
        assert_eq!(down("parallel"), "parallel");
        assert_eq!(down("self::rt"), "super::rt");
        assert_eq!(down("super::rt"), "super::super::rt");
    }

    #[test]
    fn types_keep_their_meaning_inside_the_module() {
        let down = |text: &str| {
            let ty = type_one_module_down(&syn::parse_str(text).unwrap());
            quote!(#ty).to_string().replace(' ', "")
        };
        assert_eq!(down("Vec<self::A>"), "Vec<super::A>");
        assert_eq!(down("super::A<crate::B,C>"), "super::super::A<crate::B,C>");
        assert_eq!(down("[self::A;self::N]"), "[super::A;super::N]");
        assert_eq!(down("Option<Task>"), "Option<super::Task>");
        assert_eq!(down("Task::Inner"), "super::Task::Inner");
        assert_eq!(down("::a::Task"), "::a::Task");
    }

    #[test]
    fn serde_gets_the_runtime_path_as_text() {
        assert_eq!(path_text(&syn::parse_str("::parallel").unwrap()), "::parallel");
        assert_eq!(path_text(&syn::parse_str("super::super::rt").unwrap()), "super::super::rt");
    }
}
