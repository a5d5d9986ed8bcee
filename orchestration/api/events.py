"""GET /api/orchestration/events and its Server-Sent Events stream (docs/EVENTS.md).

Who sees what: an organization's API key and its viewers see that organization's
events; its operators, admins and owners also see the fleet's (events of no
organization: nodes, scaling, configuration); nodes (node token) and staff see every
event, optionally narrowed to one organization.

The list is an ordinary DRF view. The stream is a plain async Django view -- DRF views
are synchronous and would pin a thread and a database connection to every idle client
-- that authenticates with the same authenticators before it starts streaming.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.authentication import ApiKeyAuthentication, OrganizationSessionAuthentication
from agents.choices import MemberRole, Scope
from agents.models import Agent, Organization
from agents.principal import Principal
from config.exceptions import ApiError, api_exception_handler, error_response
from config.schema import ErrorEnvelopeSerializer
from config.serializers import SentLengthMixin
from orchestration.api.fleet_auth import (
    FleetPrincipal,
    NodeTokenAuthentication,
    StaffSessionAuthentication,
)
from orchestration.bus import event_wire
from orchestration.bus.selectors import (
    MAX_PAGE,
    EventScope,
    connection_released,
    events_after,
)
from orchestration.bus.slots import stream_slots
from orchestration.bus.stream import event_stream
from orchestration.choices import EventType

# Nodes and staff first (they see the fleet), then an organization's key or member.
EVENT_AUTHENTICATION = [
    NodeTokenAuthentication,
    StaffSessionAuthentication,
    ApiKeyAuthentication,
    OrganizationSessionAuthentication,
]
# Members with these roles run the organization's agents on the fleet: they see it too.
FLEET_READER_ROLES = frozenset({MemberRole.OPERATOR, MemberRole.ADMIN, MemberRole.OWNER})
DEFAULT_LIMIT = 100


class EventReadPermission(BasePermission):
    message = "Reading events needs the runs:read scope."

    def has_permission(self, request, view) -> bool:
        principal = request.auth
        if isinstance(principal, FleetPrincipal):
            return True
        return isinstance(principal, Principal) and principal.has_scope(Scope.RUNS_READ)


# --- wire shapes -------------------------------------------------------------------------


class EventQuerySerializer(SentLengthMixin, serializers.Serializer):
    after = serializers.IntegerField(
        min_value=0, required=False, help_text="Only events with a greater id."
    )
    type = serializers.ChoiceField(choices=EventType.choices, required=False)
    agent = serializers.CharField(
        required=False, max_length=120, help_text="An agent's slug (or name)."
    )
    organization = serializers.SlugField(
        required=False, help_text="Nodes and staff: only this organization's events."
    )


class EventListQuerySerializer(EventQuerySerializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_PAGE, default=DEFAULT_LIMIT)


class EventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.ChoiceField(choices=EventType.choices)
    organization = serializers.UUIDField(allow_null=True)
    agent = serializers.UUIDField(allow_null=True)
    run = serializers.UUIDField(allow_null=True)
    node = serializers.CharField(allow_null=True)
    payload = serializers.DictField()
    createdAt = serializers.DateTimeField()


class EventListResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    events = EventSerializer(many=True)
    count = serializers.IntegerField()
    next = serializers.IntegerField(
        help_text="The cursor for the next page: pass it as after= (unchanged when empty)."
    )
    timestamp = serializers.DateTimeField()


# --- scope ------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        "INVALID_REQUEST", "The request is invalid; see details.", details={field: [message]}
    )


def event_scope(principal, params: dict) -> EventScope:
    """What the caller may see, narrowed by the query's organization, type and agent."""
    slug = params.get("organization")
    if isinstance(principal, FleetPrincipal):
        organization_id, include_fleet = None, True
        if slug:
            organization = Organization.objects.filter(slug=slug).first()
            if organization is None:
                raise _invalid("organization", f"No organization {slug!r}.")
            organization_id, include_fleet = str(organization.pk), False
    else:
        if slug and slug != principal.organization.slug:
            # Another organization is indistinguishable from one that does not exist.
            raise _invalid("organization", f"No organization {slug!r}.")
        organization_id = str(principal.organization.pk)
        include_fleet = principal.role in FLEET_READER_ROLES

    agent_ids = None
    reference = params.get("agent")
    if reference:
        agents = Agent.objects.filter(Q(slug=reference) | Q(name=reference))
        if organization_id is not None:
            agents = agents.filter(organization_id=organization_id)
        agent_ids = frozenset(str(pk) for pk in agents.values_list("pk", flat=True))
        if not agent_ids:
            raise _invalid("agent", f"No agent {reference!r}.")
    return EventScope(
        organization_id=organization_id,
        include_fleet=include_fleet,
        type=params.get("type"),
        agent_ids=agent_ids,
    )


# --- GET events ---------------------------------------------------------------------------


class EventListView(APIView):
    authentication_classes = EVENT_AUTHENTICATION
    permission_classes = [EventReadPermission]

    @extend_schema(
        operation_id="orchestration_events",
        summary="Read the event log after a cursor",
        description=(
            "Events visible to the caller with id > `after`, oldest first. Page on with"
            " `after=<next>`. The closed list of types is in docs/EVENTS.md."
        ),
        parameters=[EventListQuerySerializer],
        responses={
            200: EventListResponseSerializer,
            400: OpenApiResponse(description="A bad parameter (INVALID_REQUEST)."),
        },
    )
    def get(self, request):
        # A plain dict: a QueryDict lets DRF skip blank values ("type=") instead of refusing.
        query = EventListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        params = query.validated_data
        scope = event_scope(request.auth, params)
        after = params.get("after", 0)
        events = [
            event_wire(event)
            for event in events_after(scope=scope, after=after, limit=params["limit"])
        ]
        return Response(
            {
                "success": True,
                "events": events,
                "count": len(events),
                "next": events[-1]["id"] if events else after,
                "timestamp": timezone.now().isoformat(),
            }
        )


# --- GET events/stream ----------------------------------------------------------------------


def _exception_response(exc: exceptions.APIException, request: Request) -> JsonResponse:
    """The API's error envelope for an exception raised outside a DRF view."""
    response = api_exception_handler(exc, {"request": request, "view": None})
    answer = JsonResponse(response.data, status=response.status_code)
    for header, value in response.headers.items():
        if header.lower() != "content-type":
            answer[header] = value
    if response.status_code == 401:
        answer["WWW-Authenticate"] = 'Bearer realm="api"'
    return answer


def _last_event_id(request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise _invalid("Last-Event-ID", "Must be the id of an event (a non-negative integer).")
    return value


# The stream may stay open for hours: it must not keep this request's connection.
@connection_released
def _stream_prepare(request) -> HttpResponse | tuple[EventScope, int | None, str]:
    """Authenticate, authorize and read the query, synchronously, as a DRF view would."""
    drf_request = Request(request, authenticators=[cls() for cls in EVENT_AUTHENTICATION])
    try:
        principal = drf_request.auth
        if principal is None:
            raise exceptions.NotAuthenticated()
        if not EventReadPermission().has_permission(drf_request, None):
            raise exceptions.PermissionDenied(EventReadPermission.message)
        query = EventQuerySerializer(data=request.GET.dict())
        query.is_valid(raise_exception=True)
        params = query.validated_data
        # A reconnecting EventSource repeats its original URL and adds the header.
        last_event_id = _last_event_id(request)
        after = last_event_id if last_event_id is not None else params.get("after")
        scope = event_scope(principal, params)
        return scope, after, principal.key
    except exceptions.APIException as exc:
        return _exception_response(exc, drf_request)


async def event_stream_view(request):
    if request.method != "GET":
        return error_response("METHOD_NOT_ALLOWED", "Method not allowed.", 405)
    # Credentials and the query are checked first, so a bad request is told so (4xx)
    # whichever server it reached.
    prepared = await sync_to_async(_stream_prepare)(request)
    if isinstance(prepared, HttpResponse):
        return prepared
    if not isinstance(request, ASGIRequest):
        return error_response(
            "NOT_IMPLEMENTED",
            "The event stream is served by the ASGI server"
            " (uvicorn config.asgi:application); poll GET /api/orchestration/events instead.",
            501,
        )
    scope, after, key = prepared
    cap = settings.SSE_MAX_CONNECTIONS_PER_KEY
    slot = await stream_slots().acquire(key, cap)
    if slot is None:
        response = error_response(
            "RATE_LIMITED",
            f"At most {cap} event streams may be open at once per caller.",
            429,
            details={"limit": cap},
        )
        response["Retry-After"] = str(settings.SSE_HEARTBEAT_S)
        return response
    response = StreamingHttpResponse(
        event_stream(
            scope=scope,
            after=after,
            heartbeat_s=settings.SSE_HEARTBEAT_S,
            poll_s=settings.SSE_POLL_S,
            slot=slot,
        ),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


class EventStreamSchema(APIView):
    """The schema of event_stream_view, which is not a DRF view (see the module docstring).

    The route's callback is the async view; this class only describes it to
    drf-spectacular, which reads ``callback.cls``.
    """

    authentication_classes = EVENT_AUTHENTICATION
    permission_classes = [EventReadPermission]

    @extend_schema(
        operation_id="orchestration_events_stream",
        summary="Stream events (Server-Sent Events)",
        description=(
            "`text/event-stream`: each event is `id: <id>`, `event: <type>`, `data: <JSON of"
            " the event>`; a `: keepalive` comment every SSE_HEARTBEAT_S (15) seconds."
            " Resumes after the `Last-Event-ID` header (else `after`; with neither, only new"
            " events). Same scoping and filters as GET events. Served by the ASGI server;"
            " at most SSE_MAX_CONNECTIONS_PER_KEY streams per caller (429 RATE_LIMITED)."
        ),
        parameters=[
            EventQuerySerializer,
            OpenApiParameter(
                "Last-Event-ID",
                {"type": "integer", "minimum": 0},
                OpenApiParameter.HEADER,
                description="Resume after this event id (sent by EventSource on reconnect).",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                response=OpenApiTypes.STR, description="An endless stream of events."
            ),
            400: OpenApiResponse(description="A bad parameter (INVALID_REQUEST)."),
            429: OpenApiResponse(description="Too many open streams (RATE_LIMITED)."),
            501: OpenApiResponse(
                response=ErrorEnvelopeSerializer,
                description="Reached a WSGI server: the stream needs the ASGI server"
                " (NOT_IMPLEMENTED).",
            ),
        },
    )
    def get(self, request):  # pragma: no cover - never routed
        raise exceptions.MethodNotAllowed(request.method)


def event_stream_route():
    """The stream's URL callback: the async view, described by EventStreamSchema."""
    view = event_stream_view
    view.cls = EventStreamSchema  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    return view
