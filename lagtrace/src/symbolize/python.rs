//! Which asyncio task a Python stack ran in.
//! The frames themselves are read by the kernel at each sample and resolved
//! in `cpython/`.
use super::frame::Frame;

/// The running asyncio task of a Python stack (outermost first): the
/// coroutine that the event loop's `Handle._run` (or the pure-Python
/// `Task.__step`) called.
pub fn task_of(stack: &[Frame]) -> Option<String> {
    // 3.11+ names methods by qualified name (`Handle._run`), older ones `_run`.
    let in_file = |f: &Frame, file: &str| f.file.as_deref().is_some_and(|p| p.ends_with(file));
    let run = stack.iter().rposition(|f| {
        f.is_python()
            && ((f.function.ends_with("_run") && in_file(f, "asyncio/events.py"))
                || ((f.function.ends_with("__step_run_and_handle_result")
                    || f.function.ends_with("__step"))
                    && in_file(f, "asyncio/tasks.py")))
    })?;
    (run + 1 < stack.len()).then(|| task_at(stack, run + 1))
}

/// The task whose coroutine is `stack[at]` (outermost first), named by
/// its coroutine, or by its handler when that is a framework's wrapper.
pub fn task_at(stack: &[Frame], at: usize) -> String {
    let Some(coro) = stack.get(at) else {
        return String::new();
    };
    // A framework's per-request wrapper (aiohttp's
    // `RequestHandler._handle_request`, uvicorn's `run_asgi`) runs every
    // request: name the first user frame it called, the handler.
    let rules = crate::spans::blame::Rules::default();
    if coro.is_python()
        && !rules.is_user(coro)
        && let Some(handler) = stack[at..]
            .iter()
            .find(|f| f.is_python() && rules.is_user(f))
    {
        return handler.label();
    }
    coro.label()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_is_the_coroutine_under_the_loop() {
        let s: Vec<Frame> = [
            "<module> (app/main.py:1)",
            "run_forever (asyncio/base_events.py:607)",
            "_run (asyncio/events.py:80)",
            "decode_response (app/client.py:88)",
            "loads (json/__init__.py:346)",
        ]
        .iter()
        .map(|s| Frame::parse(s))
        .collect();
        assert_eq!(
            task_of(&s).as_deref(),
            Some("decode_response (app/client.py:88)")
        );
        assert_eq!(task_of(&s[..2]), None);
    }

    #[test]
    fn a_framework_wrapper_task_is_named_by_its_handler() {
        let site = "/venv/lib/python3.12/site-packages";
        let s = vec![
            Frame::python(
                "run_forever",
                "/usr/lib/python3.12/asyncio/base_events.py",
                Some(607),
            ),
            Frame::python(
                "Handle._run",
                "/usr/lib/python3.12/asyncio/events.py",
                Some(84),
            ),
            Frame::python(
                "RequestHandler._handle_request",
                format!("{site}/aiohttp/web_protocol.py"),
                Some(577),
            ),
            Frame::python("_handle", format!("{site}/aiohttp/web_app.py"), Some(569)),
            Frame::python("catalog_handler", "/srv/frontend.py", Some(23)),
            Frame::python("load_catalog", "/srv/frontend.py", Some(18)),
        ];
        assert_eq!(
            task_of(&s).as_deref(),
            Some("catalog_handler (srv/frontend.py:23)")
        );
    }
}
