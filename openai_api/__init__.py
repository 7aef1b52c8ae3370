"""The OpenAI-compatible endpoint under /v1 (docs/openai-clients.md): GET /v1/models
and POST /v1/chat/completions, in OpenAI's request, response, chunk and error
shapes, so the `openai` SDK, agent frameworks and chat front ends work against
Parley unchanged.

Every request is a chat turn (chat.services.completions): held at its worst case,
run by the worker, charged once (reference = turn id), metered, and visible in the
wallet's transactions, the usage reports (source `openai`) and GET turns/{id}. This
package is only the HTTP edge: parsing (serializers), OpenAI's shapes (shapes),
errors (errors), the answer once the turn has finished or as it streams (answers),
and thin views."""
