"""The text precision probes and map validation run on: shipped here, nothing downloaded.

Chats like the ones the runtime decodes (questions in mathematics, physics and algorithms,
answered in prose or as JSON), split into a calibration half (the probes choose a map on it)
and a held-out validation half (the map is judged on it), plus fixed prompts whose greedy
continuations are compared with fp32's.
"""

from __future__ import annotations

__all__ = ["CALIBRATION", "GREEDY_PROMPTS", "VALIDATION"]

Chat = tuple[str, str]

CALIBRATION: tuple[Chat, ...] = (
    (
        "What is the derivative of x**3 * sin(x)?",
        "By the product rule, d/dx [x^3 sin(x)] = 3x^2 sin(x) + x^3 cos(x). The first term "
        "differentiates x^3 and keeps sin(x); the second keeps x^3 and differentiates sin(x).",
    ),
    (
        "Explain what a hash table is in two sentences.",
        "A hash table stores key-value pairs in an array, using a hash function to turn each "
        "key into an index. Lookups, inserts and deletes take constant time on average, as "
        "long as collisions are rare and the table is resized when it fills up.",
    ),
    (
        "Give the period of a simple pendulum as JSON with fields formula and variables.",
        '{"formula": "T = 2*pi*sqrt(L/g)", "variables": {"T": "period in seconds", '
        '"L": "length of the string in metres", "g": "gravitational acceleration, 9.81 m/s^2"}}',
    ),
    (
        "Is 221 a prime number?",
        "No. 221 = 13 * 17, so it has divisors other than 1 and itself. Checking primes up to "
        "sqrt(221), which is about 14.9, finds 13 as the first divisor.",
    ),
    (
        "Summarise the heat equation.",
        "The heat equation u_t = alpha * u_xx describes how temperature u spreads through a "
        "medium over time. alpha is the thermal diffusivity; larger values smooth out hot and "
        "cold regions faster. With fixed boundary values it relaxes to a steady state.",
    ),
    (
        "List three sorting algorithms with their average complexity as JSON.",
        '[{"name": "merge sort", "average": "O(n log n)"}, {"name": "quicksort", "average": '
        '"O(n log n)"}, {"name": "insertion sort", "average": "O(n^2)"}]',
    ),
    (
        "What does Newton's second law say?",
        "The net force on a body equals its mass times its acceleration, F = m a. A force of "
        "ten newtons on a two kilogram mass accelerates it at five metres per second squared.",
    ),
    (
        "Integrate 1/(1 + x**2) from 0 to 1.",
        "The antiderivative of 1/(1 + x^2) is arctan(x), so the integral is arctan(1) - "
        "arctan(0) = pi/4, roughly 0.7854.",
    ),
)

VALIDATION: tuple[Chat, ...] = (
    (
        "Describe binary search.",
        "Binary search finds a value in a sorted array by comparing it with the middle "
        "element and discarding the half that cannot contain it. Each step halves the range, "
        "so it needs about log2(n) comparisons.",
    ),
    (
        "Return the kinetic energy of a 3 kg mass at 4 m/s as JSON with value and unit.",
        '{"value": 24, "unit": "J", "formula": "E = m v^2 / 2"}',
    ),
    (
        "Why does the harmonic series diverge?",
        "Group its terms: 1/3 + 1/4 is more than 1/2, the next four terms are more than 1/2, "
        "the next eight more than 1/2, and so on. Infinitely many halves add up to infinity, "
        "so the partial sums grow without bound, although slowly, like log(n).",
    ),
    (
        "What is the Courant number in a finite difference scheme?",
        "It is c * dt / dx, the distance a wave travels in one time step measured in grid "
        "cells. Explicit schemes for the advection equation are stable only when it is at "
        "most one.",
    ),
    (
        "Give the roots of x**2 - 5x + 6 as JSON.",
        '{"roots": [2, 3], "method": "factor as (x - 2)(x - 3)"}',
    ),
    (
        "Explain Dijkstra's algorithm briefly.",
        "Dijkstra's algorithm finds shortest paths from one source in a graph with "
        "non-negative edge weights. It repeatedly takes the unvisited vertex with the smallest "
        "tentative distance from a priority queue and relaxes the edges leaving it.",
    ),
)

GREEDY_PROMPTS: tuple[str, ...] = (
    "What is the derivative of cos(x) * exp(x)?",
    "Give the area of a circle of radius 2 as JSON with fields value and formula.",
    "Name three prime numbers above 100.",
    "Explain what a linked list is.",
    "What is the speed of sound in air, roughly?",
    "Describe the steps of the Euler method for an ODE.",
)
