"""A ValidatingAdmissionPolicy + binding evaluated as the API server does, with cel-python.

No API server is available here, so the steps of the API server's validating admission
policy plugin are followed for one policy and its binding: matchConstraints (resources,
subresources, operations), the binding's paramRef (parameterNotFoundAction), the
matchConditions (all true, else the policy does not apply), the variables, then every
validation (false: denied with its messageExpression, else its message; an evaluation
error: failurePolicy decides). The CEL activation holds `object`, `oldObject` (null where
the operation has none), `request`, `params` and `variables`, as JSON decoded from the
admission request. Kubernetes adds CEL libraries to the standard ones; the one the policy
uses (strings' `join`) is provided here with the same meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError


class PolicyError(AssertionError):
    """The policy cannot be used as written (an expression does not compile)."""


@attrs.frozen
class Decision:
    allowed: bool
    applies: bool  # matched the constraints and conditions (else allowed untouched)
    messages: tuple[str, ...] = ()


def _join(items: celtypes.ListType, separator: celtypes.StringType | None = None) -> Any:
    return celtypes.StringType(str(separator or "").join(str(x) for x in items))


FUNCTIONS = {"join": _join}


class Policy:
    def __init__(self, policy: Mapping[str, Any], binding: Mapping[str, Any]) -> None:
        self.spec = policy["spec"]
        self.binding = binding["spec"]
        if self.binding["policyName"] != policy["metadata"]["name"]:
            raise PolicyError("the binding names another policy")
        self._env = celpy.Environment()
        self._programs: dict[str, celpy.Runner] = {}
        # Compile everything up front: a syntax error is a broken policy, not a denial.
        for expression in self.expressions():
            self._program(expression)

    def expressions(self) -> list[str]:
        spec = self.spec
        found = [c["expression"] for c in spec.get("matchConditions") or []]
        found += [v["expression"] for v in spec.get("variables") or []]
        for v in spec.get("validations") or []:
            found.append(v["expression"])
            if "messageExpression" in v:
                found.append(v["messageExpression"])
        return found

    def _program(self, expression: str) -> celpy.Runner:
        if expression not in self._programs:
            try:
                ast = self._env.compile(expression)
            except CELParseError as exc:
                raise PolicyError(f"does not compile: {expression!r}: {exc}") from None
            self._programs[expression] = self._env.program(ast, functions=FUNCTIONS)
        return self._programs[expression]

    def _eval(self, expression: str, activation: Mapping[str, Any]) -> Any:
        result = self._program(expression).evaluate(dict(activation))
        if isinstance(result, CELEvalError):
            raise result
        return result

    # -- the plugin's steps --------------------------------------------------------------

    def matches_constraints(self, request: Mapping[str, Any]) -> bool:
        resource = request["resource"]
        sub = request.get("subResource", "")
        for rule in self.spec["matchConstraints"]["resourceRules"]:
            if not _any(rule.get("operations"), request["operation"]):
                continue
            if not _any(rule.get("apiGroups"), resource["group"]):
                continue
            if not _any(rule.get("apiVersions"), resource["version"]):
                continue
            for name in rule.get("resources") or []:
                res, _, rule_sub = name.partition("/")
                if res not in ("*", resource["resource"]):
                    continue
                if (not sub and not rule_sub) or (sub and rule_sub in ("*", sub)):
                    return True
        return False

    def evaluate(
        self,
        request: Mapping[str, Any],
        configmaps: Mapping[tuple[str, str], Mapping[str, Any]],
    ) -> Decision:
        if not self.matches_constraints(request):
            return Decision(allowed=True, applies=False)
        ref = self.binding.get("paramRef")
        params: Any = None
        if ref is not None:
            params = configmaps.get((ref["namespace"], ref["name"]))
            if params is None:
                if ref.get("parameterNotFoundAction", "Deny") == "Deny":
                    return Decision(False, True, ("no params found for the policy binding",))
                return Decision(allowed=True, applies=False)
        activation: dict[str, Any] = {
            "object": json_to_cel(request.get("object")),
            "oldObject": json_to_cel(request.get("oldObject")),
            "request": json_to_cel(dict(request)),
            "params": json_to_cel(params),
        }
        fail = self.spec.get("failurePolicy", "Fail") == "Fail"
        for condition in self.spec.get("matchConditions") or []:
            try:
                if not self._eval(condition["expression"], activation):
                    return Decision(allowed=True, applies=False)
            except CELEvalError as exc:
                if fail:
                    return Decision(False, True, (f"matchCondition {condition['name']}: {exc}",))
                return Decision(allowed=True, applies=False)
        variables: dict[str, Any] = {}
        broken: dict[str, str] = {}
        for variable in self.spec.get("variables") or []:
            activation["variables"] = celtypes.MapType(variables)
            try:
                variables[celtypes.StringType(variable["name"])] = self._eval(
                    variable["expression"], activation
                )
            except CELEvalError as exc:
                broken[variable["name"]] = str(exc)  # an error only where it is used
        activation["variables"] = celtypes.MapType(variables)
        messages = []
        for validation in self.spec.get("validations") or []:
            expression = validation["expression"]
            uses = [n for n in broken if f"variables.{n}" in expression]
            try:
                if uses:
                    raise CELEvalError(f"variable {uses[0]}: {broken[uses[0]]}")
                ok = bool(self._eval(expression, activation))
            except CELEvalError as exc:
                if fail:
                    messages.append(f"expression {expression!r} failed: {exc}")
                continue
            if not ok:
                messages.append(self._message(validation, activation))
        return Decision(not messages, True, tuple(messages))

    def _message(self, validation: Mapping[str, Any], activation: Mapping[str, Any]) -> str:
        if "messageExpression" in validation:
            try:
                message = str(self._eval(validation["messageExpression"], activation))
                if message.strip():
                    return message
            except CELEvalError:
                pass  # the API server falls back to the static message
        return str(validation.get("message") or f"failed expression: {validation['expression']}")


def _any(allowed: Any, value: str) -> bool:
    allowed = allowed or []
    return "*" in allowed or value in allowed
