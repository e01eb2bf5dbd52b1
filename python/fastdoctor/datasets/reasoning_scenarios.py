"""The word-problem scenarios of the reasoning generator (reasoning_generator.py): the people, and per topic
the sentence templates of a start amount and of each operation on it. Data, not logic: kept apart so the
generator reads as an algorithm."""
from __future__ import annotations

import dataclasses

# A problem is a chain: a start (a given amount, or a product a * b that is the first step) and then ops,
# each changing the running amount x with one number n from the problem. Templates: "q" is the question
# sentence, "s" the solution step ({eq} becomes the equation), "ask" the final question when the op is last.
# Placeholders: {name} {Pr} {pr} {obj} {pos} (the person) {n} {a} {b} {eq} and scenario words.

PEOPLE = [("Sam", "he"), ("Mia", "she"), ("Tom", "he"), ("Lily", "she"), ("Ben", "he"), ("Ana", "she"),
           ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Emma", "she"), ("Omar", "he"), ("Nina", "she"),
           ("Ivan", "he"), ("Rosa", "she"), ("Jack", "he"), ("Maya", "she"), ("Ali", "he"), ("Kate", "she"),
           ("Raj", "he"), ("Lucy", "she")]
PRONOUNS = {"he": ("He", "he", "him", "his"), "she": ("She", "she", "her", "her")}


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str          # add | sub | mul | div | rsub (n - x)
    q: str
    s: str
    ask: str
    final: bool = False  # only as the last op (it changes what the amount means)


@dataclasses.dataclass(frozen=True)
class Scenario:
    topic: str
    given: str                 # question sentence for a given start amount {a}
    given_ask: str             # default ask
    product_q: str             # question sentence for a start product {a} x {b}
    product_s: str             # its step
    product_ask: str
    ops: tuple[Op, ...]
    words: dict = dataclasses.field(default_factory=dict)   # lists to draw scenario words from


SCENARIOS = (
    Scenario(
        "shopping",
        given="{name} spends {a} dollars on {items}.",
        given_ask="How many dollars does {pr} spend?",
        product_q="{name} buys {a} {items} that cost {b} dollars each.",
        product_s="{a} {items} at {b} dollars each cost {eq} dollars.",
        product_ask="How many dollars does {pr} spend?",
        ops=(
            Op("add", "{Pr} also buys a {extra} for {n} dollars.",
                "The {extra} adds {n} dollars, so the total is {eq} dollars.",
                "How many dollars does {pr} spend in total?"),
            Op("add", "Delivery costs {n} dollars more.",
                "With {n} dollars for delivery, the cost is {eq} dollars.",
                "How many dollars does {pr} pay in total?"),
            Op("sub", "{Pr} has a coupon for {n} dollars off.",
                "The coupon takes off {n} dollars, so {pr} pays {eq} dollars.",
                "How many dollars does {pr} pay?"),
            Op("mul", "{Pr} buys the same things every week for {n} weeks.",
                "Over {n} weeks {pr} spends {eq} dollars.",
                "How many dollars does {pr} spend over the {n} weeks?"),
            Op("div", "{Pr} shares the cost equally among {n} people.",
                "Shared among {n} people, each person pays {eq} dollars.",
                "How many dollars does each person pay?", final=True),
            Op("rsub", "{Pr} pays with {n} dollars.",
                "From {n} dollars, {pr} gets {eq} dollars in change.",
                "How many dollars of change does {pr} get?", final=True),
        ),
        words={"items": ["notebooks", "pens", "mugs", "books", "shirts", "plants", "toys", "lamps"],
               "extra": ["bag", "hat", "scarf", "poster", "card", "box"]},
    ),
    Scenario(
        "savings",
        given="{name} has {a} dollars saved.",
        given_ask="How many dollars does {pr} have?",
        product_q="{name} saves {b} dollars every week for {a} weeks.",
        product_s="In {a} weeks at {b} dollars a week, {pr} saves {eq} dollars.",
        product_ask="How many dollars does {pr} save?",
        ops=(
            Op("add", "{Pr} gets {n} dollars as a birthday gift.",
                "The gift of {n} dollars brings it to {eq} dollars.",
                "How many dollars does {pr} have now?"),
            Op("add", "{Pr} earns {n} dollars washing cars.",
                "Washing cars adds {n} dollars, so {pr} has {eq} dollars.",
                "How many dollars does {pr} have now?"),
            Op("sub", "{Pr} spends {n} dollars on a {thing}.",
                "After spending {n} dollars on the {thing}, {pr} has {eq} dollars left.",
                "How many dollars does {pr} have left?"),
            Op("sub", "{Pr} lends {n} dollars to a friend.",
                "Lending {n} dollars leaves {pr} with {eq} dollars.",
                "How many dollars does {pr} have left?"),
            Op("div", "{Pr} puts the money into {n} jars, the same amount in each.",
                "Each of the {n} jars gets {eq} dollars.",
                "How many dollars go into each jar?", final=True),
            Op("rsub", "{Pr} wants a {big} that costs {n} dollars.",
                "The {big} costs {n} dollars, so {pr} still needs {eq} dollars.",
                "How many more dollars does {pr} need?", final=True),
        ),
        words={"thing": ["game", "book", "ticket", "kite", "puzzle", "ball"],
               "big": ["bike", "guitar", "tablet", "scooter", "camera", "tent"]},
    ),
    Scenario(
        "travel",
        given="{name} drives {a} km in the morning.",
        given_ask="How many km does {pr} drive?",
        product_q="{name} drives at {b} km per hour for {a} hours.",
        product_s="Driving {a} hours at {b} km per hour covers {eq} km.",
        product_ask="How many km does {pr} drive?",
        ops=(
            Op("add", "Then {pr} drives another {n} km.",
                "Another {n} km makes {eq} km.",
                "How many km does {pr} drive in total?"),
            Op("add", "After lunch {pr} drives {n} km more to a lake.",
                "The {n} km to the lake bring the distance to {eq} km.",
                "How many km does {pr} drive in total?"),
            Op("sub", "A shortcut saves {pr_obj} {n} km.",
                "The shortcut saves {n} km, so the drive is {eq} km.",
                "How many km does {pr} drive?"),
            Op("mul", "{Pr} makes the same drive {n} times this month.",
                "Making the drive {n} times covers {eq} km.",
                "How many km does {pr} drive this month?"),
            Op("div", "The distance is split into {n} equal parts.",
                "Each of the {n} parts is {eq} km.",
                "How many km long is each part?", final=True),
            Op("rsub", "The whole trip is {n} km long.",
                "Of the {n} km trip, {eq} km are still left.",
                "How many km of the trip are left?", final=True),
        ),
    ),
    Scenario(
        "baking",
        given="{name} has {a} cookies.",
        given_ask="How many cookies does {pr} have?",
        product_q="{name} bakes {a} trays of {b} cookies.",
        product_s="{a} trays of {b} cookies make {eq} cookies.",
        product_ask="How many cookies does {pr} bake?",
        ops=(
            Op("add", "{Pr} buys {n} more cookies at the shop.",
                "With {n} more cookies from the shop, {pr} has {eq} cookies.",
                "How many cookies does {pr} have now?"),
            Op("add", "A neighbour brings {n} cookies.",
                "The neighbour's {n} cookies make {eq} cookies.",
                "How many cookies are there now?"),
            Op("sub", "{Pr} eats {n} cookies.",
                "After eating {n} cookies, {pr} has {eq} cookies.",
                "How many cookies does {pr} have left?"),
            Op("sub", "{n} cookies break and are thrown away.",
                "Without the {n} broken cookies, there are {eq} cookies.",
                "How many cookies are left?"),
            Op("div", "{Pr} shares the cookies equally among {n} friends.",
                "Shared among {n} friends, each friend gets {eq} cookies.",
                "How many cookies does each friend get?", final=True),
            Op("div", "{Pr} packs the cookies into bags of {n}.",
                "Bags of {n} cookies make {eq} bags.",
                "How many bags does {pr} fill?", final=True),
        ),
    ),
    Scenario(
        "orchard",
        given="{name} picks {a} apples.",
        given_ask="How many apples does {pr} pick?",
        product_q="{name} picks {b} apples from each of {a} trees.",
        product_s="{a} trees with {b} apples each give {eq} apples.",
        product_ask="How many apples does {pr} pick?",
        ops=(
            Op("add", "{Pr} finds {n} more apples on the ground.",
                "Adding the {n} apples from the ground gives {eq} apples.",
                "How many apples does {pr} have now?"),
            Op("sub", "{n} of the apples are rotten and thrown away.",
                "Throwing away {n} rotten apples leaves {eq} apples.",
                "How many apples are left?"),
            Op("sub", "{Pr} sells {n} apples at the market.",
                "After selling {n} apples, {pr} has {eq} apples.",
                "How many apples does {pr} have left?"),
            Op("add", "{Pr_pos} sister gives {pr_obj} {n} apples.",
                "With {n} apples from {pr_pos} sister, {pr} has {eq} apples.",
                "How many apples does {pr} have now?"),
            Op("div", "{Pr} packs the apples into bags of {n}.",
                "Bags of {n} apples make {eq} bags.",
                "How many bags does {pr} fill?", final=True),
            Op("mul", "{Pr} sells every apple for {n} cents.",
                "At {n} cents each, the apples bring {eq} cents.",
                "How many cents does {pr} get?", final=True),
        ),
    ),
    Scenario(
        "reading",
        given="{name} reads {a} pages on Monday.",
        given_ask="How many pages does {pr} read?",
        product_q="{name} reads {b} pages a day for {a} days.",
        product_s="In {a} days at {b} pages a day, {pr} reads {eq} pages.",
        product_ask="How many pages does {pr} read?",
        ops=(
            Op("add", "On the weekend {pr} reads {n} more pages.",
                "The {n} weekend pages bring it to {eq} pages.",
                "How many pages does {pr} read in total?"),
            Op("add", "On the train {pr} reads another {n} pages.",
                "Another {n} pages on the train make {eq} pages.",
                "How many pages does {pr} read in total?"),
            Op("sub", "{Pr} skips {n} pages of pictures, which do not count.",
                "Without the {n} picture pages, {pr} reads {eq} pages.",
                "How many pages count?"),
            Op("mul", "Each of the {n} members of {pr_pos} book club reads the same amount.",
                "The {n} members together read {eq} pages.",
                "How many pages does the book club read in total?", final=True),
            Op("rsub", "The book has {n} pages.",
                "The book has {n} pages, so {eq} pages are left to read.",
                "How many pages does {pr} still have to read?", final=True),
            Op("div", "{Pr} writes one note for every {n} pages.",
                "One note per {n} pages makes {eq} notes.",
                "How many notes does {pr} write?", final=True),
        ),
    ),
    Scenario(
        "classroom",
        given="A teacher has {a} pencils.",
        given_ask="How many pencils does the teacher have?",
        product_q="A teacher buys {a} boxes of {b} pencils.",
        product_s="{a} boxes of {b} pencils hold {eq} pencils.",
        product_ask="How many pencils does the teacher buy?",
        ops=(
            Op("add", "She finds {n} more pencils in a drawer.",
                "With the {n} pencils from the drawer, she has {eq} pencils.",
                "How many pencils does she have now?"),
            Op("sub", "{n} pencils get lost.",
                "Losing {n} pencils leaves {eq} pencils.",
                "How many pencils are left?"),
            Op("add", "The school gives her {n} more pencils.",
                "The school's {n} pencils make {eq} pencils.",
                "How many pencils does she have now?"),
            Op("sub", "She gives {n} pencils to another class.",
                "After giving away {n} pencils, she has {eq} pencils.",
                "How many pencils does she have left?"),
            Op("div", "She shares the pencils equally among {n} students.",
                "Shared among {n} students, each student gets {eq} pencils.",
                "How many pencils does each student get?", final=True),
            Op("mul", "She does the same for each of her {n} classes.",
                "For {n} classes that is {eq} pencils.",
                "How many pencils is that for all her classes?", final=True),
        ),
    ),
)


# Level 0: the question is the bare sum or difference ("What is 7 + 5?") and the solution its one equation.
# The smallest step below the word problems that SmolLM2-135M can do at all (the probe in reasoning.meta.json:
# 0.20 greedy accuracy here, 0.10 on the one-step word problems of level 1).
ARITHMETIC = Scenario(
    "arithmetic", given="What is {a}", given_ask="", product_q="", product_s="", product_ask="",
    ops=(Op("add", "+ {n}?", "{eq}.", ""), Op("sub", "- {n}?", "{eq}.", "")))
