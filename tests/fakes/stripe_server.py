"""A fake Stripe API: a stdlib `ThreadingHTTPServer` on 127.0.0.1 in a daemon thread,
spoken to by the real `stripe` client and by dj-stripe (point `STRIPE_API_BASE` at
`server.url` and use `server.api_key` as `STRIPE_SECRET_KEY`).

It keeps its objects in memory with the shapes of Stripe's API at the pinned version
(API_VERSION; the fields Parley and dj-stripe read, checked against Stripe's own
fixtures in github.com/stripe/openapi: a charge lists no `refunds` unless expanded,
a dispute embeds its balance transactions and may have a null `payment_intent`,
inquiries are `warning_*`) and answers like Stripe: form-encoded requests, `expand[]`,
JSON errors (`resource_missing` 404, a 401 for a wrong key), and an
`Idempotency-Key` replays the first answer. The calls served:

    GET  /v1/account
    POST /v1/customers                GET /v1/customers/{id}
    POST /v1/payment_intents          GET /v1/payment_intents/{id}
         (with confirm=true, off_session=true and a saved payment_method: charged at
         once, or a 402 card_error for a card made to decline)
    GET  /v1/payment_intents          (the list: `customer`, `created` as a timestamp
         or gt/gte/lt/lte, `limit` 1-100, `starting_after`; newest first, `has_more`)
    POST /v1/checkout/sessions        GET /v1/checkout/sessions/{id}   (payment and setup mode)
    GET  /v1/setup_intents/{id}
    GET  /v1/charges/{id}  /v1/refunds/{id}  /v1/disputes/{id}
    GET  /v1/payment_methods/{id}  /v1/balance_transactions/{id}  /v1/events/{id}
    POST /v1/webhook_endpoints        GET /v1/webhook_endpoints/{id}

What happens off the API (a customer paying, a refund from the dashboard, a
dispute) is driven from Python and returns the event payload Stripe would send:

    event = server.pay(pi_id)                  # payment_intent.succeeded
    completed, paid = server.complete_checkout(cs_id)  # checkout.session.completed (+ payment_intent.succeeded)
    completed, _ = server.complete_checkout(cs_id)     # setup mode: a card saved (SetupIntent succeeded)
    event = server.expire_checkout(cs_id)      # checkout.session.expired
    server.decline(pm_id)                      # off-session charges of this card answer a 402 card_error
    event = server.intent_event(pi_id, "payment_intent.succeeded")  # the event of an intent as it is
    event = server.refund(pi_id, amount=300)   # charge.refunded (cumulative amount_refunded)
    event = server.fail_refund(re_id)          # charge.refund.updated (status failed)
    event = server.dispute(pi_id)              # charge.dispute.created (a chargeback: funds withdrawn)
    event = server.dispute(pi_id, status="warning_needs_response")  # an inquiry: no funds move
    event = server.escalate_dispute(dp_id)     # charge.dispute.funds_withdrawn
    event = server.close_dispute(dp_id, "won") # charge.dispute.closed (won: funds reinstated)
    event = server.dispute_event(dp_id, "charge.dispute.funds_reinstated")
    body, header = sign_event(event, secret)   # a real Stripe-Signature: t=...,v1=HMAC-SHA256("t.body")

`server.fail_next(n, status=500)` makes the next n API calls fail (`method=` only
those of one method); `server.lose_next(n)` carries the next n POSTs out and loses
their answers (the connection closes before a byte of the answer: the client sees a
dropped connection, as for a timeout, though Stripe did the work);
`server.forget_idempotency_keys()` is Stripe's 24 hours passing (a key used before
no longer replays its first answer); `server.requests`
records every call (method, path, params, Stripe-Version, Idempotency-Key). Run as
its own process (`python -m tests.fakes.stripe_server`), it prints its URL and key,
and `POST /_fake/pay/{pi_id}` stands in for `pay()`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "2026-05-27.dahlia"
LOST = 0  # dispatch's status for an answer to drop (lose_next)


def sign_payload(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send for `payload`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def sign_event(event: dict, secret: str, timestamp: int | None = None) -> tuple[str, str]:
    body = json.dumps(event)
    return body, sign_payload(body, secret, timestamp)


def _parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket encoding (`metadata[a]=1`, `expand[0]=x`) back into dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else parts[i + 1]
            container_for_next: Any = [] if (nxt is not None and (nxt == "" or nxt.isdigit())) else {}
            if isinstance(node, list):
                index = len(node) if part == "" else int(part)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = container_for_next
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, container_for_next)
    return root


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    stripe_version: str | None
    idempotency_key: str | None
    authorization: str | None


@dataclass
class Fault:
    remaining: int
    status: int
    path_prefix: str
    method: str | None = None  # None: any

    def takes(self, method: str, path: str) -> bool:
        """Whether this call is one of the fault's (and if so, counts it)."""
        if self.remaining <= 0 or not path.startswith(self.path_prefix) or self.method not in (None, method):
            return False
        self.remaining -= 1
        return True


@dataclass
class FakeStripe:
    api_key: str = field(default_factory=lambda: f"sk_test_{secrets.token_hex(16)}")
    account_id: str = "acct_1FakeParleyAccount"
    objects: dict[str, dict[str, dict]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    # Calls carried out whose answers are dropped (lose_next); status unused.
    losses: list[Fault] = field(default_factory=list)
    idempotent: dict[str, tuple[int, dict]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    url: str = ""
    clock: int = 0  # the last event's `created`
    endpoint_secrets: dict[str, str] = field(default_factory=dict)
    # Called as hook(method, path, params) in the server thread before each answer.
    hooks: list[Any] = field(default_factory=list)
    # Payment methods whose off-session charges are declined: {pm id: (decline_code, message)}.
    declining: dict[str, tuple[str, str]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> FakeStripe:
        return self.start_on(0)

    def start_on(self, port: int) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms stalls

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def _handle(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                params = _parse_form(
                    parse_qsl(split.query, keep_blank_values=True) + parse_qsl(raw, keep_blank_values=True)
                )
                for hook in list(fake.hooks):
                    hook(method, split.path, params)
                status, body = fake.dispatch(method, split.path, params, self.headers)
                if status == LOST:
                    # Done at "Stripe", the answer never arrives: the client sees the
                    # connection drop (requests: RemoteDisconnected).
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
                if status >= 500:
                    # Let the caller's own retry policy (the Celery task) decide.
                    self.send_header("Stripe-Should-Retry", "false")
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-stripe").start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.objects.clear()
            self.requests.clear()
            self.faults.clear()
            self.losses.clear()
            self.idempotent.clear()
            self.hooks.clear()
            self.declining.clear()
            self.endpoint_secrets.clear()

    def fail_next(self, count: int, *, status: int = 500, path_prefix: str = "/v1/", method: str | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(count, status, path_prefix, method))

    def lose_next(self, count: int, *, path_prefix: str = "/v1/", method: str = "POST") -> None:
        """The next `count` matching calls are carried out (objects made, the
        Idempotency-Key's answer stored) and their answers lost. The stripe client
        retries a dropped connection (stripe.max_network_retries times, under the same
        key): lose 1 + that many for the caller to see the answer lost for good."""
        with self.lock:
            self.losses.append(Fault(count, LOST, path_prefix, method))

    def forget_idempotency_keys(self) -> None:
        """Stripe's idempotency window (24 hours) has passed for every key used so far:
        a request under one of them is a new request."""
        with self.lock:
            self.idempotent.clear()

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[RecordedRequest]:
        with self.lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    # --- HTTP ---------------------------------------------------------------------

    def dispatch(self, method: str, path: str, params: dict, headers: Any) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(
                RecordedRequest(
                    method, path, params, headers.get("Stripe-Version"), headers.get("Idempotency-Key"),
                    headers.get("Authorization"),
                )
            )  # fmt: skip
            if path.startswith("/_fake/pay/") and method == "POST":
                # Out-of-band driver for a fake run as its own process (bench/webhooks.py).
                return 200, self.pay(path.rsplit("/", 1)[1])
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, _error("invalid_request_error", "Invalid API Key provided.", code="api_key_invalid")
            for fault in self.faults:
                if fault.takes(method, path):
                    return fault.status, _error("api_error", "The fake Stripe failed on purpose.")
            key = headers.get("Idempotency-Key")
            if method == "POST" and key and key in self.idempotent:
                status, body = copy.deepcopy(self.idempotent[key])
            else:
                status, body = self._route(method, path, params)
                if method == "POST" and key and status < 500:
                    self.idempotent[key] = (status, copy.deepcopy(body))
            if any(loss.takes(method, path) for loss in self.losses):
                return LOST, {}
            return status, body

    def _route(self, method: str, path: str, params: dict) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"] or len(parts) < 2:
            return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        resource = parts[1]
        if resource == "checkout" and parts[2:3] == ["sessions"]:
            # Checkout's objects live under /v1/checkout/sessions; kept as "checkout_sessions".
            parts, resource = ["v1", "checkout_sessions", *parts[3:]], "checkout_sessions"
        if resource == "payment_intents" and len(parts) == 2 and method == "POST" and params.get("confirm") == "true":
            return self._create_confirmed_payment_intent(params)
        if resource == "account" and method == "GET":
            return 200, self.account()
        if resource == "payment_intents" and len(parts) == 2 and method == "GET":
            return self._list_payment_intents(params)
        if len(parts) == 2 and method == "POST":
            create = {
                "customers": self._create_customer,
                "payment_intents": self._create_payment_intent,
                "checkout_sessions": self._create_checkout_session,
                "webhook_endpoints": self._create_webhook_endpoint,
            }.get(resource)
            if create is None:
                return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
            return 200, create(params)
        if len(parts) == 3 and method == "GET":
            obj = self.objects.get(resource, {}).get(parts[2])
            if obj is None:
                name = "checkout.session" if resource == "checkout_sessions" else resource[:-1]
                return 404, _error(
                    "invalid_request_error",
                    f"No such {name}: '{parts[2]}'",
                    code="resource_missing",
                    param="id",
                )
            return 200, self._expanded(obj, params.get("expand") or [])
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def _expanded(self, obj: dict, expand: list[str]) -> dict:
        result = copy.deepcopy(obj)
        if "refunds" in expand and obj.get("object") == "charge":
            # Not part of a charge at this API version unless expanded.
            refunds = [r for r in self.objects.get("refunds", {}).values() if r["charge"] == obj["id"]]
            result["refunds"] = {"object": "list", "data": copy.deepcopy(refunds), "has_more": False,
                                 "url": f"/v1/charges/{obj['id']}/refunds"}  # fmt: skip
        if "line_items" in expand and obj.get("object") == "checkout.session":
            result["line_items"] = {"object": "list", "data": copy.deepcopy(obj.get("_line_items", [])),
                                    "has_more": False, "url": f"/v1/checkout/sessions/{obj['id']}/line_items"}  # fmt: skip
        result.pop("_line_items", None)
        for name in expand:
            value = result.get(name)
            if isinstance(value, str):
                found = self._find(value)
                if found is not None:
                    result[name] = copy.deepcopy(found)
        return result

    def _find(self, object_id: str) -> dict | None:
        for table in self.objects.values():
            if object_id in table:
                return table[object_id]
        return None

    # --- objects ------------------------------------------------------------------

    def _store(self, resource: str, obj: dict) -> dict:
        self.objects.setdefault(resource, {})[obj["id"]] = obj
        return obj

    def get(self, resource: str, object_id: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.objects[resource][object_id])

    def account(self) -> dict:
        return {
            "id": self.account_id,
            "object": "account",
            "business_profile": {"name": "Parley (fake)", "support_email": None, "url": None},
            "business_type": "company",
            "capabilities": {"card_payments": "active", "transfers": "active"},
            "charges_enabled": True,
            "country": "US",
            "created": 1_700_000_000,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "owner@parley.test",
            "metadata": {},
            "payouts_enabled": True,
            "settings": {"dashboard": {"display_name": "Parley", "timezone": "Etc/UTC"}},
            "type": "standard",
        }

    def _create_customer(self, params: dict) -> dict:
        return self._store(
            "customers",
            {
                "id": _new_id("cus"),
                "object": "customer",
                "address": None,
                "balance": 0,
                "created": int(time.time()),
                "currency": None,
                "default_source": None,
                "delinquent": False,
                "description": params.get("description"),
                "email": params.get("email"),
                "invoice_prefix": secrets.token_hex(4).upper(),
                "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
                "livemode": False,
                "metadata": params.get("metadata") or {},
                "name": params.get("name") or None,
                "phone": None,
                "preferred_locales": [],
                "shipping": None,
                "tax_exempt": "none",
            },
        )

    def _create_payment_intent(self, params: dict) -> dict:
        pi_id = _new_id("pi")
        return self._store(
            "payment_intents",
            {
                "id": pi_id,
                "object": "payment_intent",
                "amount": int(params["amount"]),
                "amount_capturable": 0,
                "amount_details": {"tip": {}},
                "application": None,
                "application_fee_amount": None,
                "amount_received": 0,
                "automatic_payment_methods": {"enabled": True} if params.get("automatic_payment_methods") else None,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic",
                "client_secret": f"{pi_id}_secret_{secrets.token_hex(12)}",
                "confirmation_method": "automatic",
                "created": int(time.time()),
                "currency": params["currency"],
                "customer": params.get("customer"),
                "description": params.get("description"),
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": params.get("metadata") or {},
                "next_action": None,
                "on_behalf_of": None,
                "payment_method": None,
                "payment_method_types": ["card"],
                "receipt_email": None,
                "setup_future_usage": None,
                "shipping": None,
                "payment_method_configuration_details": None,
                "payment_method_options": {},
                "processing": None,
                "review": None,
                "statement_descriptor": None,
                "statement_descriptor_suffix": None,
                "status": "requires_payment_method",
                "transfer_data": None,
                "transfer_group": None,
            },
        )

    def _list_payment_intents(self, params: dict) -> tuple[int, dict]:
        """GET /v1/payment_intents: newest first (here: last made first), filtered by
        `customer` and `created` (a timestamp, or gt/gte/lt/lte), `limit` (1-100,
        default 10) at a time after `starting_after`."""
        try:
            limit = int(params.get("limit") or 10)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return 400, _error("invalid_request_error", "This value must be between 1 and 100.", param="limit")
        created = params.get("created")
        bounds = created if isinstance(created, dict) else ({"gte": created, "lte": created} if created else {})
        tests = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        intents = [
            intent
            for intent in reversed(list(self.objects.get("payment_intents", {}).values()))
            if params.get("customer") in (None, intent["customer"])
            and all(tests[op](intent["created"], int(value)) for op, value in bounds.items() if op in tests)
        ]
        if after := params.get("starting_after"):
            ids = [intent["id"] for intent in intents]
            if after not in ids:
                return 400, _error("invalid_request_error", f"No such payment_intent: '{after}'",
                                   code="resource_missing", param="starting_after")  # fmt: skip
            intents = intents[ids.index(after) + 1 :]
        return 200, {
            "object": "list",
            "data": copy.deepcopy(intents[:limit]),
            "has_more": len(intents) > limit,
            "url": "/v1/payment_intents",
        }

    def create_payment_intent(
        self, *, amount: int, currency: str = "usd", metadata: dict | None = None, customer: str | None = None
    ) -> dict:
        """A PaymentIntent made outside Parley (another integration on the same account)."""
        with self.lock:
            params = {"amount": amount, "currency": currency, "metadata": metadata or {}, "customer": customer}
            return copy.deepcopy(self._create_payment_intent(params))

    def _create_webhook_endpoint(self, params: dict) -> dict:
        # Stripe shows the signing secret in the create call's answer only.
        secret = f"whsec_{secrets.token_hex(16)}"
        stored = self._store(
            "webhook_endpoints",
            {
                "id": _new_id("we"),
                "object": "webhook_endpoint",
                "api_version": params.get("api_version"),
                "application": None,
                "created": int(time.time()),
                "description": None,
                "enabled_events": params.get("enabled_events") or ["*"],
                "livemode": False,
                "metadata": params.get("metadata") or {},
                "status": "enabled",
                "url": params["url"],
            },
        )
        self.endpoint_secrets[stored["id"]] = secret
        return {**copy.deepcopy(stored), "secret": secret}

    def webhook_secret(self, endpoint_id: str) -> str:
        """The signing secret Stripe generated for an endpoint (what it signs events with)."""
        with self.lock:
            return self.endpoint_secrets[endpoint_id]

    def _balance_transaction(self, *, amount: int, source: str, kind: str) -> str:
        txn = self._store(
            "balance_transactions",
            {
                "id": _new_id("txn"),
                "object": "balance_transaction",
                "amount": amount,
                "available_on": int(time.time()) + 86400 * 2,
                "created": int(time.time()),
                "currency": "usd",
                "description": None,
                "exchange_rate": None,
                "fee": 0 if amount <= 0 else 30 + amount * 29 // 1000,
                "fee_details": [],
                "net": amount if amount <= 0 else amount - (30 + amount * 29 // 1000),
                "balance_type": "payments",
                "reporting_category": kind,
                "source": source,
                "status": "pending",
                "type": kind,
            },
        )
        return txn["id"]

    # --- what happens outside the API (each returns the event Stripe would send) ----

    def event(self, event_type: str, obj: dict, *, previous_attributes: dict | None = None) -> dict:
        with self.lock:
            data: dict[str, Any] = {"object": copy.deepcopy(obj)}
            if previous_attributes is not None:
                data["previous_attributes"] = previous_attributes
            # Strictly increasing, like Stripe's events of one object days apart (the
            # handlers order snapshots of one object by it).
            self.clock = max(int(time.time()), self.clock + 1)
            event = {
                "id": _new_id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": self.clock,
                "data": data,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": event_type,
            }
            return copy.deepcopy(self._store("events", event))

    def _card(self, customer: str | None, last4: str = "4242") -> dict:
        return self._store(
            "payment_methods",
            {
                "id": _new_id("pm"),
                "object": "payment_method",
                "allow_redisplay": "unspecified",
                "billing_details": {"address": None, "email": None, "name": None, "phone": None, "tax_id": None},
                "card": {"brand": "visa", "checks": {"address_line1_check": None, "address_postal_code_check": None,
                                                     "cvc_check": "pass"},
                         "country": "US", "display_brand": "visa", "exp_month": 12, "exp_year": 2034,
                         "fingerprint": secrets.token_hex(8), "funding": "credit", "generated_from": None,
                         "last4": last4, "networks": {"available": ["visa"], "preferred": None},
                         "regulated_status": "unregulated", "three_d_secure_usage": {"supported": True},
                         "wallet": None},
                "created": int(time.time()),
                "customer": customer,
                "customer_account": None,
                "livemode": False,
                "metadata": {},
                "type": "card",
            },
        )  # fmt: skip

    def pay(self, pi_id: str) -> dict:
        """The customer confirms with a card: the PaymentIntent succeeds with one charge."""
        with self.lock:
            intent = self.objects["payment_intents"][pi_id]
            self._charge(intent, self._card(intent["customer"]))
            return self.event("payment_intent.succeeded", intent)

    def _charge(self, intent: dict, method: dict) -> None:
        """The intent's payment goes through: one succeeded charge, the intent succeeded."""
        pi_id = intent["id"]
        charge_id = _new_id("ch")
        self._store(
            "charges",
            {
                "id": charge_id,
                "object": "charge",
                "amount": intent["amount"],
                "amount_captured": intent["amount"],
                "amount_refunded": 0,
                "application": None,
                "application_fee": None,
                "application_fee_amount": None,
                "balance_transaction": self._balance_transaction(
                    amount=intent["amount"], source=charge_id, kind="charge"
                ),
                "billing_details": method["billing_details"],
                "calculated_statement_descriptor": "PARLEY",
                "captured": True,
                "created": int(time.time()),
                "currency": intent["currency"],
                "customer": intent["customer"],
                "description": intent["description"],
                "disputed": False,
                "failure_balance_transaction": None,
                "failure_code": None,
                "failure_message": None,
                "fraud_details": {},
                "livemode": False,
                "metadata": {},
                "on_behalf_of": None,
                "outcome": {"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                            "seller_message": "Payment complete.", "type": "authorized"},
                "paid": True,
                "payment_intent": pi_id,
                "payment_method": method["id"],
                "payment_method_details": {"card": method["card"], "type": "card"},
                "receipt_email": None,
                "receipt_number": None,
                "receipt_url": None,
                "refunded": False,
                "review": None,
                "shipping": None,
                "source": None,
                "source_transfer": None,
                "statement_descriptor": None,
                "statement_descriptor_suffix": None,
                "status": "succeeded",
                "transfer_data": None,
                "transfer_group": None,
            },
        )  # fmt: skip
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            latest_charge=charge_id,
            payment_method=method["id"],
        )

    def intent_event(self, pi_id: str, event_type: str) -> dict:
        """The event Stripe sends about a PaymentIntent as it is now (e.g. an off-session
        charge that succeeded at creation: payment_intent.succeeded)."""
        with self.lock:
            return self.event(event_type, self.objects["payment_intents"][pi_id])

    def decline(self, pm_id: str, decline_code: str = "insufficient_funds",
                message: str = "Your card has insufficient funds.") -> None:  # fmt: skip
        """Off-session charges of this card are declined from now on."""
        with self.lock:
            self.declining[pm_id] = (decline_code, message)

    def _create_confirmed_payment_intent(self, params: dict) -> tuple[int, dict]:
        """confirm=true with a saved card (off_session=true for a customer not present):
        Stripe charges it in the create call. A declined card answers 402 with a
        card_error naming the PaymentIntent, left requires_payment_method, and Stripe
        sends payment_intent.payment_failed."""
        method = self.objects.get("payment_methods", {}).get(params.get("payment_method") or "")
        if method is None:
            return 400, _error("invalid_request_error", f"No such PaymentMethod: '{params.get('payment_method')}'",
                               code="resource_missing", param="payment_method")  # fmt: skip
        if method.get("customer") != params.get("customer"):
            return 400, _error("invalid_request_error", "The provided PaymentMethod belongs to another customer.",
                               param="payment_method")  # fmt: skip
        intent = self._create_payment_intent(params)
        intent.update(payment_method=method["id"], confirmation_method="automatic")
        if method["id"] in self.declining:
            decline_code, message = self.declining[method["id"]]
            last_error = {"code": "card_declined", "decline_code": decline_code,
                          "doc_url": "https://stripe.com/docs/error-codes/card-declined", "message": message,
                          "payment_method": copy.deepcopy(method), "type": "card_error"}  # fmt: skip
            intent.update(status="requires_payment_method", payment_method=None, last_payment_error=last_error)
            error = {**{k: v for k, v in last_error.items() if k != "payment_method"},
                     "payment_intent": copy.deepcopy(intent), "payment_method": copy.deepcopy(method)}  # fmt: skip
            return 402, {"error": error}
        self._charge(intent, method)
        return 200, intent

    # --- Checkout -------------------------------------------------------------------

    def _create_checkout_session(self, params: dict) -> dict:
        cs_id = f"cs_test_{secrets.token_hex(16)}"
        mode = params["mode"]
        items = []
        for item in params.get("line_items") or []:
            price_data = item["price_data"]
            amount = int(price_data["unit_amount"]) * int(item.get("quantity") or 1)
            items.append({"id": _new_id("li"), "object": "item", "amount_discount": 0, "amount_subtotal": amount,
                          "amount_tax": 0, "amount_total": amount, "currency": price_data["currency"],
                          "description": price_data["product_data"]["name"], "metadata": None,
                          "price": None, "quantity": int(item.get("quantity") or 1)})  # fmt: skip
        total = sum(item["amount_total"] for item in items) if mode == "payment" else None
        session = {
            "id": cs_id,
            "object": "checkout.session",
            "adaptive_pricing": {"enabled": False},
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "client_secret": None,
            "collected_information": None,
            "consent": None,
            "consent_collection": None,
            "created": int(time.time()),
            "currency": params.get("currency") or (items[0]["currency"] if items else None),
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },  # fmt: skip
            "customer": params.get("customer"),
            "customer_account": None,
            "customer_creation": None,
            "customer_details": None,
            "customer_email": None,
            "discounts": [],
            "expires_at": int(time.time()) + 86400,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": None,
            "metadata": params.get("metadata") or {},
            "mode": mode,
            "origin_context": None,
            "payment_intent": None,  # made when the customer pays (API versions since 2022-08-01)
            "payment_link": None,
            "payment_method_collection": "always",
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": "unpaid" if mode == "payment" else "no_payment_required",
            "permissions": None,
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
            if total is not None
            else None,
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{cs_id}",
            "wallet_options": None,
            # Not part of the object: what the session was asked to put on the intents it makes.
            "_payment_intent_data": params.get("payment_intent_data") or {},
            "_setup_intent_data": params.get("setup_intent_data") or {},
            "_line_items": items,
        }
        self._store("checkout_sessions", session)
        return self._public(session)

    @staticmethod
    def _public(session: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}

    def complete_checkout(self, cs_id: str, last4: str = "4242") -> tuple[dict, dict | None]:
        """The customer finishes the hosted page. Payment mode: a PaymentIntent (with
        payment_intent_data's metadata) is made and paid; returns the
        checkout.session.completed and payment_intent.succeeded events. Setup mode: a
        card is saved through a SetupIntent (usage off_session, attached to the
        session's customer); returns checkout.session.completed and None."""
        with self.lock:
            session = self.objects["checkout_sessions"][cs_id]
            method = self._card(session["customer"], last4)
            paid = None
            if session["mode"] == "payment":
                data = session["_payment_intent_data"]
                intent = self._create_payment_intent({
                    "amount": session["amount_total"], "currency": session["currency"],
                    "customer": session["customer"], "metadata": data.get("metadata") or {},
                    "description": data.get("description"),
                })  # fmt: skip
                self._charge(intent, method)
                session.update(payment_intent=intent["id"], payment_status="paid", status="complete", url=None)
                paid = self.event("payment_intent.succeeded", intent)
            else:
                seti_id = _new_id("seti")
                self._store("setup_intents", {
                    "id": seti_id, "object": "setup_intent", "application": None,
                    "automatic_payment_methods": None, "cancellation_reason": None,
                    "client_secret": f"{seti_id}_secret_{secrets.token_hex(12)}", "created": int(time.time()),
                    "customer": session["customer"], "customer_account": None, "description": None,
                    "excluded_payment_method_types": None, "flow_directions": None, "last_setup_error": None,
                    "latest_attempt": None, "livemode": False, "mandate": None,
                    "metadata": session["_setup_intent_data"].get("metadata") or {}, "next_action": None,
                    "on_behalf_of": None, "payment_method": method["id"],
                    "payment_method_configuration_details": None, "payment_method_options": {},
                    "payment_method_types": ["card"], "single_use_mandate": None, "status": "succeeded",
                    "usage": "off_session",
                })  # fmt: skip
                session.update(setup_intent=seti_id, status="complete", url=None)
            completed = self.event("checkout.session.completed", self._public(session))
            return completed, paid

    def expire_checkout(self, cs_id: str) -> dict:
        """The session expired unpaid (24 hours, or expired through the API)."""
        with self.lock:
            session = self.objects["checkout_sessions"][cs_id]
            session.update(status="expired", url=None)
            return self.event("checkout.session.expired", self._public(session))

    def fail_payment(self, pi_id: str, message: str = "Your card was declined.") -> dict:
        with self.lock:
            intent = self.objects["payment_intents"][pi_id]
            intent.update(
                status="requires_payment_method",
                last_payment_error={"code": "card_declined", "message": message, "type": "card_error"},
            )
            return self.event("payment_intent.payment_failed", intent)

    def _charge_of(self, pi_or_charge_id: str) -> dict:
        if pi_or_charge_id.startswith("pi_"):
            pi_or_charge_id = self.objects["payment_intents"][pi_or_charge_id]["latest_charge"]
        return self.objects["charges"][pi_or_charge_id]

    def refunds_of(self, pi_or_charge_id: str) -> list[dict]:
        """The charge's refunds, oldest first (what `expand[]=refunds` lists)."""
        with self.lock:
            charge_id = self._charge_of(pi_or_charge_id)["id"]
            return [copy.deepcopy(r) for r in self.objects.get("refunds", {}).values() if r["charge"] == charge_id]

    def refund(self, pi_or_charge_id: str, amount: int | None = None) -> dict:
        """A refund of `amount` cents (the rest when None): charge.refunded with the
        charge's new cumulative amount_refunded. At this API version the charge in the
        event carries no `refunds` list (only `expand[]=refunds` on a GET lists them)."""
        with self.lock:
            charge = self._charge_of(pi_or_charge_id)
            amount = charge["amount"] - charge["amount_refunded"] if amount is None else amount
            self._store(
                "refunds",
                {
                    "id": _new_id("re"),
                    "object": "refund",
                    "amount": amount,
                    "balance_transaction": self._balance_transaction(
                        amount=-amount, source=charge["id"], kind="refund"
                    ),
                    "charge": charge["id"],
                    "created": int(time.time()),
                    "currency": charge["currency"],
                    "destination_details": {"card": {"type": "refund"}, "type": "card"},
                    "metadata": {},
                    "payment_intent": charge["payment_intent"],
                    "reason": "requested_by_customer",
                    "receipt_number": None,
                    "source_transfer_reversal": None,
                    "status": "succeeded",
                    "transfer_reversal": None,
                },
            )
            previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            return self.event("charge.refunded", charge, previous_attributes=previous)

    def fail_refund(self, refund_id: str, reason: str = "expired_or_canceled_card") -> dict:
        """The card refused the refund: the money returns to the balance (a
        refund_failure balance transaction), the refund is `failed`, the charge's
        amount_refunded no longer counts it; Stripe sends charge.refund.updated."""
        with self.lock:
            refund = self.objects["refunds"][refund_id]
            charge = self.objects["charges"][refund["charge"]]
            refund.update(
                status="failed",
                failure_reason=reason,
                failure_balance_transaction=self._balance_transaction(
                    amount=refund["amount"], source=refund_id, kind="refund_failure"
                ),
            )
            charge["amount_refunded"] -= refund["amount"]
            charge["refunded"] = False
            return self.event("charge.refund.updated", refund, previous_attributes={"status": "succeeded"})

    # Dispute statuses at this API version. Inquiries (warning_*) move no money; a
    # chargeback withdraws the disputed amount when it opens (a balance transaction on
    # the dispute, charge.dispute.funds_withdrawn) and reinstates it when won
    # (charge.dispute.funds_reinstated); `prevented` (Visa RDR) moves no dispute funds
    # (the payment is refunded instead).
    WITHDRAWN_STATUSES = ("needs_response", "under_review", "lost")

    def dispute(
        self,
        pi_or_charge_id: str,
        amount: int | None = None,
        reason: str = "fraudulent",
        *,
        status: str = "needs_response",
        payment_intent: bool = True,
    ) -> dict:
        """A dispute opens: charge.dispute.created. `status="warning_needs_response"` is
        an inquiry, `"prevented"` a dispute resolved by refunding (RDR). With
        `payment_intent=False` the dispute names only its charge, as Stripe's own
        fixture does (payment_intent: null)."""
        with self.lock:
            charge = self._charge_of(pi_or_charge_id)
            amount = charge["amount"] if amount is None else amount
            dispute_id = _new_id("dp")
            inquiry = status.startswith("warning_")
            dispute = self._store(
                "disputes",
                {
                    "id": dispute_id,
                    "object": "dispute",
                    "amount": amount,
                    "balance_transactions": [],
                    "charge": charge["id"],
                    "created": int(time.time()),
                    "currency": charge["currency"],
                    "enhanced_eligibility_types": [],
                    "evidence": {"customer_name": None, "product_description": None, "uncategorized_text": None},
                    "evidence_details": {"due_by": int(time.time()) + 86400 * 7, "enhanced_eligibility": {},
                                         "has_evidence": False, "past_due": False, "submission_count": 0},
                    "is_charge_refundable": inquiry,
                    "livemode": False,
                    "metadata": {},
                    "payment_intent": charge["payment_intent"] if payment_intent else None,
                    "payment_method_details": {
                        "card": {"brand": "visa", "case_type": "inquiry" if inquiry else "chargeback",
                                 "network_reason_code": "10.4"},
                        "type": "card",
                    },
                    "reason": reason,
                    "status": status,
                },
            )  # fmt: skip
            if status in self.WITHDRAWN_STATUSES:
                self._dispute_funds(dispute, -amount)
            charge["disputed"] = True
            return self.event("charge.dispute.created", dispute)

    def _dispute_funds(self, dispute: dict, amount: int) -> None:
        """A withdrawal (amount < 0, with Stripe's dispute fee) or a reinstatement,
        embedded in the dispute as Stripe does."""
        txn_id = self._balance_transaction(
            amount=amount, source=dispute["id"], kind="dispute" if amount < 0 else "dispute_reversal"
        )
        txn = self.objects["balance_transactions"][txn_id]
        fee = 1500 if amount < 0 else -1500
        txn.update(type="adjustment", fee=fee, net=amount - fee, status="available")
        dispute["balance_transactions"].append(copy.deepcopy(txn))

    def escalate_dispute(self, dispute_id: str) -> dict:
        """An inquiry becomes a chargeback: the funds are withdrawn."""
        with self.lock:
            dispute = self.objects["disputes"][dispute_id]
            dispute.update(status="needs_response", is_charge_refundable=False)
            dispute["payment_method_details"]["card"]["case_type"] = "chargeback"
            self._dispute_funds(dispute, -dispute["amount"])
            return self.event("charge.dispute.funds_withdrawn", dispute)

    def close_dispute(self, dispute_id: str, status: str) -> dict:
        """charge.dispute.closed; a won chargeback has its funds reinstated first (see
        dispute_event for the charge.dispute.funds_reinstated Stripe also sends)."""
        with self.lock:
            dispute = self.objects["disputes"][dispute_id]
            withdrawn = sum(txn["amount"] for txn in dispute["balance_transactions"])
            if status == "won" and withdrawn < 0:
                self._dispute_funds(dispute, -withdrawn)
            dispute["status"] = status
            return self.event("charge.dispute.closed", dispute)

    def dispute_event(self, dispute_id: str, event_type: str) -> dict:
        """Another event about the dispute as it is now (funds_withdrawn, funds_reinstated, updated)."""
        with self.lock:
            return self.event(event_type, self.objects["disputes"][dispute_id])


_counter = iter(range(1, 10**9))
_counter_lock = threading.Lock()


def _new_id(prefix: str) -> str:
    with _counter_lock:
        n = next(_counter)
    return f"{prefix}_{n:06d}{secrets.token_hex(7)}"


def _error(kind: str, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return {"error": error}


if __name__ == "__main__":  # the fake as its own process: python -m tests.fakes.stripe_server [--port N]
    import argparse

    parser = argparse.ArgumentParser(description="A fake Stripe API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeStripe()
    fake.start_on(args.port)
    print(json.dumps({"url": fake.url, "api_key": fake.api_key}), flush=True)
    threading.Event().wait()
