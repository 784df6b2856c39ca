"""The compression report's variant list: the variant it marks as shipped (the star of
docs/compression-pareto.png) is the model the appliance really loads."""
from __future__ import annotations

from appliance.config import Config
from build_tools.compress.report import is_shipped
from build_tools.compress.variants import load_spec


def test_each_kind_has_one_shipped_variant_and_it_is_the_configured_model():
    config = Config()
    configured = {"reader": config.paths.reader_model, "retriever": config.paths.retriever_model}
    for kind, model in configured.items():
        shipped = [v for v in load_spec() if v.kind == kind and is_shipped({"stage": v.stage})]
        assert [v.model for v in shipped] == [str(model)], kind


def test_a_variant_is_shipped_only_when_its_stage_says_so():
    assert is_shipped({"stage": "teacher int8 dynamic (shipped)"})
    assert not is_shipped({"stage": "student 3L int8 dynamic"})
    assert not is_shipped({})
