//! The spans SOPHIA exports: one server span per request (an App Insights request) and one
//! client span per outbound call (a dependency), joined into the caller's trace by W3C
//! `traceparent` in and out (see [`super::request`] for how they are kept). With telemetry
//! off every function here is a cheap no-op.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::Value;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::SpanTemplate;
pub use super::request::Pending as Dependency;
use crate::llm::ModelEndpoint;

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`) as a remote span context; `None`
/// when it is not one (an all-zero id included), so a malformed header starts a new trace.
pub fn parse_traceparent(raw: &str) -> Option<SpanContext> {
    let mut parts = raw.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four parts; a later version may add more (and is read as 00).
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let parent = SpanId::from_hex(parent).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    );
    cx.is_valid().then_some(cx)
}

/// The `traceparent` that names `cx` as the parent.
pub fn format_traceparent(cx: &SpanContext) -> String {
    let bytes =
        super::envelope::traceparent(cx.trace_id(), cx.span_id(), cx.trace_flags().is_sampled());
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Names the company, instance and agent type a request acts for on the current request.
pub fn record_caller(company: &str, instance: &crate::domain::InstanceId, agent_type: &str) {
    if !super::enabled() {
        return;
    }
    super::request::set_caller(|| {
        let mut buf = [0u8; 36];
        // A known agent type without a copy.
        let agent_type = match crate::domain::AgentType::parse(agent_type) {
            Some(known) => Value::from(known.as_str()),
            None => Value::from(agent_type.to_owned()),
        };
        [
            shared(company),
            shared(instance.encode(&mut buf)),
            agent_type,
        ]
    });
}

/// Most strings a thread keeps to share.
const SHARED_MAX: usize = 8;
/// Longer strings are copied (they are not the ids and names this is for).
const SHARED_LEN: usize = 64;

thread_local! {
    /// Strings this thread recorded lately (the companies and instances it serves, the routes
    /// asked for, the models that answered), most used first: the same value again is shared,
    /// not copied. Per thread, so the count a span's copy adds is not contended; the spans are
    /// dropped on the thread that made them ([`super::export`]), so it goes back down there too.
    static SHARED: RefCell<Vec<Arc<str>>> = const { RefCell::new(Vec::new()) };
}

/// `s` as an attribute value: shared with the last spans of this thread that recorded it.
pub fn shared(s: &str) -> Value {
    Value::String(shared_str(s).into())
}

/// `s`, shared with the last spans and requests of this thread that recorded it (a new copy
/// when it is long or this thread's strings cannot be had).
pub fn shared_str(s: &str) -> Arc<str> {
    if s.len() > SHARED_LEN {
        return Arc::from(s);
    }
    SHARED
        .try_with(|cell| {
            let Ok(mut recent) = cell.try_borrow_mut() else {
                return Arc::from(s);
            };
            let found = match recent.iter().position(|r| &**r == s) {
                Some(i) => {
                    // Kept near the front while it is used.
                    if i > 0 {
                        recent.swap(i, i - 1);
                        i - 1
                    } else {
                        0
                    }
                }
                None => {
                    if recent.len() == SHARED_MAX {
                        recent.pop();
                    }
                    recent.insert(0, Arc::from(s));
                    0
                }
            };
            Arc::clone(&recent[found])
        })
        .unwrap_or_else(|_| Arc::from(s))
}

/// Most templates a thread keeps a copy of.
const COPIES_MAX: usize = 8;

thread_local! {
    /// This thread's copies of the span templates its calls used lately (each beside the one it
    /// copies), most used first.
    static COPIES: RefCell<Vec<(Arc<SpanTemplate>, Arc<SpanTemplate>)>> =
        const { RefCell::new(Vec::new()) };
}

/// This thread's copy of `template`, made on first use. A span takes a count of its template
/// and gives it back when it is dropped (on this thread, [`super::export`]): of a copy of its
/// own thread's, the count stays in this core's cache; of one every thread's spans shared, it
/// was a cache line both cores wrote per call, at every sampling. The copy keeps the template it
/// copies alive, so a new template at the same address is never taken for it.
pub fn thread_copy(template: &Arc<SpanTemplate>) -> Arc<SpanTemplate> {
    COPIES
        .try_with(|cell| {
            let Ok(mut copies) = cell.try_borrow_mut() else {
                return Arc::clone(template);
            };
            match copies.iter().position(|(of, _)| Arc::ptr_eq(of, template)) {
                Some(0) => Arc::clone(&copies[0].1),
                // Kept near the front while it is used.
                Some(i) => {
                    copies.swap(i, i - 1);
                    Arc::clone(&copies[i - 1].1)
                }
                None => {
                    if copies.len() == COPIES_MAX {
                        copies.pop();
                    }
                    let copy = Arc::new(template.copy());
                    copies.insert(0, (Arc::clone(template), Arc::clone(&copy)));
                    copy
                }
            }
        })
        .unwrap_or_else(|_| Arc::clone(template))
}

/// The dependency span of one call to a company's model (`operation`: `chat`, `responses`
/// or `embeddings`), with the GenAI semantic-convention attributes, under the current request.
pub fn model_span(operation: &'static str, endpoint: &ModelEndpoint, stream: bool) -> Dependency {
    if !super::enabled() {
        return Dependency::none();
    }
    Dependency::from_template(|| endpoint.span_template(operation, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_string_is_shared_and_the_cache_stays_small() {
        let at = |v: &Value| match v {
            Value::String(s) => s.as_str().as_ptr(),
            other => panic!("{other:?}"),
        };
        let acme = shared("acme");
        assert_eq!(acme.as_str(), "acme");
        assert_eq!(at(&shared("acme")), at(&acme), "shared, not copied");
        assert_eq!(shared_str("acme").as_ptr(), at(&acme), "the same string");
        // Many others push it out; the cache holds at most SHARED_MAX.
        for i in 0..3 * SHARED_MAX {
            assert_eq!(
                shared(&format!("company-{i}")).as_str(),
                format!("company-{i}")
            );
        }
        assert!(SHARED.with(|c| c.borrow().len()) <= SHARED_MAX);
        assert_eq!(shared("acme").as_str(), "acme");
        // A long value is copied, never kept.
        let long = "x".repeat(SHARED_LEN + 1);
        assert_ne!(at(&shared(&long)), at(&shared(&long)));
        assert!(SHARED.with(|c| c.borrow().iter().all(|s| s.len() <= SHARED_LEN)));
        // Another thread has its own.
        let there = std::thread::spawn(|| SHARED.with(|c| c.borrow().len()));
        assert_eq!(there.join().unwrap(), 0);
    }

    #[test]
    fn a_template_is_copied_once_per_thread() {
        let template = Arc::new(SpanTemplate::new(
            "chat gpt-4o",
            vec![opentelemetry::KeyValue::new(
                "gen_ai.request.model",
                "gpt-4o",
            )],
        ));
        let mine = thread_copy(&template);
        assert!(!Arc::ptr_eq(&mine, &template), "a copy");
        assert_eq!(mine.name(), "chat gpt-4o");
        assert_eq!(mine.attributes(), template.attributes());
        assert!(
            Arc::ptr_eq(&thread_copy(&template), &mine),
            "the same copy again"
        );
        // Another thread has its own.
        let there = {
            let template = Arc::clone(&template);
            std::thread::spawn(move || Arc::as_ptr(&thread_copy(&template)) as usize)
                .join()
                .unwrap()
        };
        assert_ne!(there, Arc::as_ptr(&mine) as usize);
        // Many others push it out; at most COPIES_MAX are kept, each with what it copies.
        let others: Vec<_> = (0..2 * COPIES_MAX)
            .map(|i| Arc::new(SpanTemplate::new(format!("t{i}"), vec![])))
            .collect();
        for other in &others {
            assert_eq!(thread_copy(other).name(), other.name());
        }
        assert!(COPIES.with(|c| c.borrow().len()) <= COPIES_MAX);
        assert!(COPIES.with(|c| c.borrow().iter().all(|(of, copy)| of.name() == copy.name())));
        let again = thread_copy(&template);
        assert!(!Arc::ptr_eq(&again, &mine), "copied anew once pushed out");
        assert_eq!(again.attributes(), template.attributes());
    }

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let raw = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parse_traceparent(raw).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(cx.is_remote());
        assert_eq!(format_traceparent(&cx), raw);
        for bad in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version with more fields is read as version 00.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_some()
        );
    }
}
