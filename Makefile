# llm-fleet: the two commands people run are `make lab` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export LLMFLEET_CACHE ?= $(HOME)/.cache/llmfleet
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Molecule scenarios make test runs (one per role that has one).
MOLECULE_SCENARIOS ?= $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

.PHONY: help bootstrap venv lint unit molecule lab lab-down test

help:
	@echo "make lab        lab up + site.yml on the container lab + endpoint health table"
	@echo "make lab-down   remove the lab containers (and dockerd, if llm-fleet started it)"
	@echo "make test       everything CI runs (installs what it needs, cleans up after itself)"
	@echo "make lint | unit | molecule [SCENARIO=name] | venv | bootstrap"

bootstrap:
	scripts/bootstrap.sh system

venv:
	scripts/bootstrap.sh venv

lint: venv
	scripts/test.sh lint

unit: venv
	$(VENV)/bin/pytest -q tests/unit tests/system

molecule: venv
	$(VENV)/bin/llmfleet lab images
	cd $(CURDIR) && for s in $(or $(SCENARIO),$(MOLECULE_SCENARIOS)); do molecule test -s $$s || exit 1; done

lab: bootstrap venv
	$(VENV)/bin/llmfleet lab up
	$(VENV)/bin/llmfleet deploy site.yml
	$(VENV)/bin/llmfleet lab status

lab-down:
	$(VENV)/bin/llmfleet lab down --stop-daemon

test:
	scripts/test.sh all
