//! What `#[task]` emits beside its errors when a function has mistakes: a stub of `mod NAME`.
//!
//! Without it, every `NAME::dispatch(..)`, `NAME::dispatch_on(..)`, `NAME::new(..)` and
//! `NAME::Task` in the crate would be one more error (or, on a compiler that silences unresolved
//! paths after a failed expansion, one more unchecked call, and an editor that cannot follow
//! it). The stub has the items callers name, with the signatures the real module would have
//! where the function lets them be known, so one mistake is one error and the callers are still
//! checked (thiserror's `fallback.rs` does the same for its trait impls). Nothing in it runs: the
//! crate does not build until the mistake is fixed, so the bodies are `unreachable!()` and
//! nothing is registered.
//!
//! Loosely, where the function is wrong: arguments keep their types as written, with the
//! function's generics and `where` clause copied onto each stub function, so that a generic,
//! borrowed or `impl Trait` argument still accepts what its callers pass; `self` and every
//! `Environment` parameter are left out, as the real module leaves the `Environment` out. An
//! output or error type that `Task` could not name (borrowed, generic, `impl Trait`, `!`)
//! becomes `()`.

use proc_macro2::{Ident, TokenStream};
use quote::quote;
use syn::visit_mut::{self, VisitMut};
use syn::{GenericParam, Generics, Lifetime, Path, Type};

use crate::ast::{Output, Param, TaskFn};
use crate::attr::Args;
use crate::expand::{
    generics_one_module_down, one_module_down, one_module_up, path_text, root,
    type_one_module_down, Docs,
};

/// The stub `mod NAME` for a task function that has mistakes.
pub(crate) fn task_fn(args: &Args, task: &TaskFn) -> TokenStream {
    let item = &task.item;
    let ident = task.ident();
    // Everything below is emitted one module down, inside `mod NAME`, as in `expand`.
    let root = one_module_down(&root(args));
    let private = quote!(#root::__private);
    let vis = &item.vis;
    let inner_vis = one_module_up(vis);
    let cfgs = item.attrs.iter().filter(|attr| attr.path().is_ident("cfg"));
    let generics = generics_one_module_down(&item.sig.generics);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let types: Vec<Type> = task
        .params
        .iter()
        .filter_map(|param| match param {
            Param::Value { ty, .. } => Some(type_one_module_down(ty)),
            Param::Receiver(_) | Param::Environment { .. } | Param::Progress { .. } => None,
        })
        .collect();
    let names: Vec<Ident> =
        (0..types.len()).map(|index| quote::format_ident!("__parallel_{index}")).collect();
    let nameable = |ty: &Type| {
        if is_nameable(ty, &item.sig.generics) {
            let ty = type_one_module_down(ty);
            quote!(#ty)
        } else {
            quote!(())
        }
    };
    let (output, error) = match &task.output {
        Output::Unit => (quote!(()), quote!(#private::Never)),
        Output::Value(ty) => (nameable(ty), quote!(#private::Never)),
        Output::Result { ok, err } => (nameable(ok), nameable(err)),
    };
    let serde_crate = format!("{}::__private::serde", path_text(&root));
    let unreachable = "`#[task]` reported a mistake; this stub never runs";
    let Docs { module_doc, task_doc, new_doc, dispatch_doc, dispatch_on_doc } = Docs::of(ident);
    // A note about a wrong call ("function defined here") points at the user's function.
    let [new, dispatch, dispatch_on] =
        ["new", "dispatch", "dispatch_on"].map(|name| Ident::new(name, ident.span()));

    quote! {
        #(#cfgs)*
        #[doc = #module_doc]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            #[doc = #task_doc]
            #[allow(dead_code)]
            #[derive(#private::serde::Serialize, #private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #inner_vis struct Task {}

            impl #private::Task for Task {
                type Output = #output;
                type Error = #error;
                type Progress = #private::Never;
                const NAME: &'static str = "";

                fn run(
                    self,
                    __parallel_env: &mut #private::Environment,
                ) -> #private::Result<Self::Output, Self::Error> {
                    ::core::unreachable!(#unreachable)
                }
            }

            #[doc = #new_doc]
            #[allow(dead_code)]
            #inner_vis fn #new #impl_generics (#(#names: #types),*) -> Task #where_clause {
                ::core::unreachable!(#unreachable)
            }

            #[doc = #dispatch_doc]
            #[allow(dead_code)]
            #inner_vis fn #dispatch #impl_generics (
                #(#names: #types),*
            ) -> #private::TaskHandle<Task> #where_clause {
                ::core::unreachable!(#unreachable)
            }

            #[doc = #dispatch_on_doc]
            #[allow(dead_code)]
            #inner_vis fn #dispatch_on #impl_generics (
                __parallel_pool: &#private::Pool,
                #(#names: #types),*
            ) -> #private::TaskHandle<Task> #where_clause {
                ::core::unreachable!(#unreachable)
            }
        }
    }
}

/// Whether `ty` can be `Task::Output` or `Task::Error` of the stub: it borrows nothing, names
/// none of the function's generic parameters, and is neither `impl Trait`, `_` nor `!`.
fn is_nameable(ty: &Type, generics: &Generics) -> bool {
    struct Nameable<'a> {
        /// The function's type and const parameters.
        parameters: Vec<&'a Ident>,
        is_nameable: bool,
    }

    impl VisitMut for Nameable<'_> {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if matches!(
                ty,
                Type::Reference(_) | Type::ImplTrait(_) | Type::Infer(_) | Type::Never(_)
            ) {
                self.is_nameable = false;
            }
            visit_mut::visit_type_mut(self, ty);
        }

        fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
            self.is_nameable &= lifetime.ident == "static";
        }

        fn visit_path_mut(&mut self, path: &mut Path) {
            let first = path.segments.first().map(|segment| &segment.ident);
            if path.leading_colon.is_none()
                && first.is_some_and(|first| first == "Self" || self.parameters.contains(&first))
            {
                self.is_nameable = false;
            }
            visit_mut::visit_path_mut(self, path);
        }
    }

    let parameters = generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(param) => Some(&param.ident),
            GenericParam::Const(param) => Some(&param.ident),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    let mut check = Nameable { parameters, is_nameable: true };
    check.visit_type_mut(&mut ty.clone());
    check.is_nameable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{self, Input};

    fn stub(item: TokenStream) -> String {
        let Ok(Input::Fn(task)) = ast::parse(item) else { panic!("not a function") };
        task_fn(&Args::default(), &task).to_string().replace(' ', "")
    }

    #[test]
    fn the_stub_has_every_item_with_the_arguments_but_not_the_environment() {
        let stub = stub(quote! {
            async fn visits(env: &mut Environment, user: String, (a, b): (u8, u8)) -> u64 {}
        });
        assert!(stub.contains("modvisits"), "{stub}");
        assert!(stub.contains("pub(super)structTask{}"), "{stub}");
        assert!(stub.contains("typeOutput=u64;"), "{stub}");
        assert!(stub.contains("fnnew(__parallel_0:String,__parallel_1:(u8,u8))->Task"), "{stub}");
        assert!(stub.contains("fndispatch(__parallel_0:String,__parallel_1:(u8,u8))"), "{stub}");
        assert!(
            stub.contains("fndispatch_on(__parallel_pool:&::parallel::__private::Pool,__parallel_0:String,__parallel_1:(u8,u8))"),
            "{stub}"
        );
        assert!(!stub.contains("distributed_slice"), "nothing is registered: {stub}");
    }

    #[test]
    fn generics_go_onto_each_function_and_unnameable_outputs_become_unit() {
        let stub = stub(quote! {
            fn largest<T: Ord>(items: Vec<T>, label: &str) -> Result<Option<T>, &'static str> {}
        });
        assert!(
            stub.contains("fndispatch<T:Ord>(__parallel_0:Vec<T>,__parallel_1:&str)"),
            "{stub}"
        );
        assert!(stub.contains("typeOutput=();"), "{stub}");
        assert!(stub.contains("typeError=();"), "{stub}");
    }

    #[test]
    fn nameable_types_are_those_a_task_could_carry() {
        let generics: Generics = syn::parse_quote!(<'a, T, const N: usize>);
        let nameable = |text: &str| is_nameable(&syn::parse_str(text).unwrap(), &generics);
        assert!(nameable("Vec<String>"));
        assert!(nameable("::std::collections::HashMap<u8, Option<crate::Tag>>"));
        assert!(nameable("Box<dyn Fn() + Send + 'static>"));
        assert!(nameable("Tup::T"), "a path that only ends in a parameter's name");
        assert!(!nameable("&'static str"));
        assert!(!nameable("Cow<'a, str>"));
        assert!(!nameable("Vec<T>"));
        assert!(!nameable("[u8; N]"));
        assert!(!nameable("impl Iterator<Item = u8>"));
        assert!(!nameable("Self"));
        assert!(!nameable("!"));
    }
}
