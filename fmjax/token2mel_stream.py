"""Streaming token-to-mel (historical module name); the code lives in :mod:`fmjax.pipelines.stream`."""

from fmjax.pipelines.stream import StreamHost, StreamOutput, StreamRows, StreamState, Token2MelStream

__all__ = ["Token2MelStream", "StreamState", "StreamRows", "StreamOutput", "StreamHost"]
