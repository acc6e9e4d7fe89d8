# Copyright: llm-fleet contributors
# Apache-2.0
"""What the action attributes the modules declare mean; each module says its own support and details.

Used as ``extends_documentation_fragment: [llmfleet.fleet.attributes]`` (the way community.general's
``attributes`` fragment is), so DOCUMENTATION of a module lists only ``support`` and ``details``.
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the changed status it predicts without changing the target.
  diff_mode:
    description: Returns details on what has changed (or would change, in check mode) when run in diff mode.
"""

    FACTS = r"""
attributes:
  facts:
    description: Returns an C(ansible_facts) dictionary that updates the host's facts.
"""
