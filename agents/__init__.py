"""Agents and LLM backends: DAG prompting, SPRING, policy agents, baselines, human play."""
