"""reference.py — the Python side of the chat-template render-equivalence test.

Renders a chat template the way Hugging Face transformers' apply_chat_template does
(transformers/utils/chat_template_utils.py, _compile_jinja_template): jinja2's
ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True and the loopcontrols
extension plus a `generation` block tag (transformers' AssistantTracker; here it just renders
its body), a tojson filter that is json.dumps(x, ensure_ascii=False, indent=..., separators=...,
sort_keys=False), and the globals raise_exception (a TemplateError with the template's message)
and strftime_now. strftime_now formats a fixed UTC time here (transformers uses the local
clock) so both sides agree.

Uses Debian's python3-jinja2 (3.1.x), never PyPI.
"""
import datetime
import json

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(Extension):
    """{% generation %}...{% endgeneration %}: renders its body in place."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def make_env(now_unix):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        now = datetime.datetime.fromtimestamp(now_unix, tz=datetime.timezone.utc)
        return now.replace(tzinfo=None).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, template, context):
    """Returns ("out", text) or ("error", message, raised) where raised tells whether the
    template called raise_exception (the message is then the template's own)."""
    try:
        compiled = env.from_string(template)
    except Exception as e:  # a parse error of any kind
        return ("error", f"{type(e).__name__}: {e}", False)
    try:
        return ("out", compiled.render(**context))
    except jinja2.exceptions.TemplateError as e:
        raised = type(e) is jinja2.exceptions.TemplateError
        return ("error", str(e) if raised else f"{type(e).__name__}: {e}", raised)
    except Exception as e:
        return ("error", f"{type(e).__name__}: {e}", False)
