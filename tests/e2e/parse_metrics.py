"""Parses a Prometheus text exposition (stdin) with the Prometheus project's own
parser (prometheus_client), and prints its families as JSON: a malformed exposition
raises, and the test fails with the parser's message."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "unit": family.unit,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for s in family.samples
        ],
    })
json.dump(families, sys.stdout)
