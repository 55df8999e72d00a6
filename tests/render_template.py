"""Renders a Jinja2 template (the first argument, a file) with the variables
of a JSON file (the second argument), as Grafana Cloud k6 renders a
notification template, and prints the result. Used by tests/k6cloud.rs."""
import json
import sys

import jinja2

with open(sys.argv[1], encoding="utf-8") as f:
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(f.read())
with open(sys.argv[2], encoding="utf-8") as f:
    variables = json.load(f)
sys.stdout.write(template.render(**variables))
