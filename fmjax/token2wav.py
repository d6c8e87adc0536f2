"""Streaming token2wav (historical module name): the pipeline lives in :mod:`fmjax.pipelines.token2wav`, the
vocoders in :mod:`fmjax.pipelines.vocoders`."""

from fmjax.pipelines.token2wav import Token2Wav, Token2WavOutput, Token2WavParams, Token2WavState
from fmjax.pipelines.vocoders import GriffinLimCache, GriffinLimVocoder, HiFTVocoder

__all__ = ["HiFTVocoder", "GriffinLimVocoder", "GriffinLimCache", "Token2Wav", "Token2WavParams", "Token2WavState",
           "Token2WavOutput"]
