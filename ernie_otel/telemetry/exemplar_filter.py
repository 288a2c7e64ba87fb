"""The SDK exemplar filter of a fleet replica: exemplars only where the recorder says the trace is kept.

The recorder gates its own histograms (batch.py: no span context for a trace the tail samplers
drop). Other instrumentations record in their own span's context -- the FastAPI server's
``http.server.request.duration`` in the HTTP span's, for one -- and the SDK's trace-based filter
would give them an exemplar for every sampled trace, most of which the samplers drop. With
exemplars following sampling, this filter admits a measurement only when its context carries
``KEPT_TRACE``, which the recorder sets for the traces the samplers keep.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import TraceBasedExemplarFilter
from opentelemetry.util.types import Attributes

from .batch import KEPT_TRACE


class KeptTracesExemplarFilter(TraceBasedExemplarFilter):
    def should_sample(self, value: float, time_unix_nano: int, attributes: Attributes, context: Context) -> bool:
        return context.get(KEPT_TRACE) is True and super().should_sample(value, time_unix_nano, attributes,
                                                                           context)
