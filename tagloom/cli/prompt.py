"""`tagloom prompt idea "TEXT"`: free text (any language) -> a prompt of real Danbooru tags."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("prompt", help="prompt tools: idea -> tags")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    i = sub.add_parser("idea", help="ask the LLM for tags for an idea, snap them to real tags, order them")
    i.add_argument("idea", help='free text; weights like "(red hair:1.2)" are kept')
    from tagloom.llm import registry

    i.add_argument("--provider", choices=registry.NAMES,
                   help="LLM server kind (default: config [llm] provider, else ollama); " + registry.help_text())
    i.add_argument("--base-url", help="server URL (default: the provider's usual local URL)")
    i.add_argument("--model", help="model name (default: the provider's documented default, docs/llm.md)")
    i.add_argument("--api-key-env", help="environment variable holding the API key (never a key on the command line; "
                   "default: OPENAI_API_KEY for OpenAI's own endpoint only)")
    i.add_argument("--timeout", type=float, help="seconds one request may take before it is retried (default: 120)")
    i.add_argument("--max-tags", type=int, default=30, help="at most this many tags")
    i.add_argument("--underscores", action="store_true", help="keep underscores in tag names")
    i.add_argument("--db", help="tag database file (default: the configured one)")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(handler=handle_idea)
    p.set_defaults(handler=lambda args: (p.print_help(), 1)[1])


def handle_idea(args) -> int:
    from tagloom.llm.ideas import idea_to_tags
    from tagloom.llm.pipeline import single_tier
    from tagloom.llm.providers import make_provider
    from tagloom.tags.db import TagDB

    tier = single_tier(args.provider, args.model, args.base_url, api_key_env=args.api_key_env, timeout=args.timeout)
    provider = make_provider(tier.provider, tier.model, base_url=tier.base_url, api_key_env=tier.api_key_env,
                             timeout=tier.timeout)
    with TagDB(args.db) as db:
        res = idea_to_tags(args.idea, provider, db, max_tags=args.max_tags, underscores=args.underscores)
    if args.json:
        print(json.dumps({"prompt": res.prompt, "tags": res.tags, "dropped": res.dropped, "replaced": res.replaced,
                          "usage": res.usage}, ensure_ascii=False))
    else:
        print(res.prompt)
        print(res.report())
    return 0
