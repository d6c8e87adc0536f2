"""Token-to-mel with a CosyVoice flow: offline inference and the training losses.

This module keeps its historical name; the code lives in :mod:`fmjax.pipelines.token2mel` (inference),
:mod:`fmjax.pipelines.training` (losses) and :mod:`fmjax.pipelines.common` (shared glue).
"""

from fmjax.pipelines.common import check_ids, check_lengths, pack_prompt
from fmjax.pipelines.token2mel import Token2MelOutput, sampler_config, token2mel
from fmjax.pipelines.training import COSYVOICE2_LOSS, DynamicChunks, UnifiedChunks, cfm_loss, flow_loss

__all__ = ["COSYVOICE2_LOSS", "Token2MelOutput", "token2mel", "cfm_loss", "flow_loss", "pack_prompt",
           "UnifiedChunks", "DynamicChunks", "sampler_config", "check_ids", "check_lengths"]
