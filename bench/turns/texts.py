"""What the turn-taking corpus says: questions and statements, short and long, hesitations
with the point where the caller pauses, and backchannels.

A hesitation is written with ``|`` where the caller stops to think: the turn must not end
there. Texts are the project's own; voices come from engines and recordings the project does
not use for its agent (see ``bench.turns.corpus``).
"""

from __future__ import annotations

COMPLETE: list[str] = [
    # short questions
    "What time is it?",
    "Can you hear me?",
    "Who are you?",
    "Are you open today?",
    "How much does it cost?",
    "Where are you based?",
    "Is that right?",
    "What is your name?",
    # short statements and requests
    "Thank you very much.",
    "That sounds good.",
    "Please repeat that.",
    "I need some help.",
    "Tell me a joke.",
    "Goodbye for now.",
    "I agree with you.",
    "Let's start.",
    # medium questions
    "What is your name, and what can you help me with today?",
    "How many days are there in a leap year?",
    "Could you tell me the opening hours on Saturday?",
    "What is the difference between a lake and a sea?",
    "Can you recommend a good book for a long flight?",
    "Why is the sky blue during the day?",
    "Do you know how to make a simple tomato sauce?",
    "Which planet is the closest to the sun?",
    "How long does it take to boil an egg?",
    "Is it going to rain in the city tomorrow?",
    # medium statements
    "I would like to change my delivery address.",
    "My order number is four five two seven nine.",
    "I moved to a new flat last month.",
    "The train was late again this morning.",
    "I am looking for a present for my sister.",
    "My laptop will not turn on after the update.",
    "We are planning a trip to the mountains in spring.",
    "I forgot the password to my account.",
    # long turns
    "I bought a pair of shoes from your shop last week, but they are too small, so I would like to exchange them for a bigger size.",
    "Could you explain in simple words how a heat pump works and whether it would make sense for an old house like mine?",
    "My daughter starts school in September and I would like to know which documents we need to bring on the first day.",
    "I have been trying to reach the support team for two days and nobody answers the phone, what should I do?",
    "We would like to book a room for three nights in the second week of May, preferably with a view of the lake.",
    "Can you tell me what the weather will be like this weekend, because we want to go hiking with the children?",
    "I read an article about sleep and memory yesterday and I wonder whether it is true that we learn while we sleep.",
    "Please remind me what we talked about earlier, I think it was something about the new opening hours.",
]

HESITATION: list[str] = [
    "I'd like to book | a table for two.",
    "What is your name, | and what can you help me with today?",
    "My phone number is | five five five, one two three four.",
    "I was wondering if | you could help me with my order.",
    "Can you tell me | when the museum opens?",
    "I need to | cancel my appointment for tomorrow.",
    "The problem is that | my card was charged twice.",
    "I would like to order | a large pizza with mushrooms.",
    "Could you please | send me the invoice again?",
    "My name is | Daniel Fischer.",
    "We are looking for | a quiet hotel near the beach.",
    "How much would it cost | to ship a parcel to Spain?",
    "I think the best time is | Tuesday afternoon.",
    "Can I pay | with a credit card?",
    "I'm calling because | my internet has been down since Monday.",
    "Is there a way to | change the date of my flight?",
    "The address is | twelve Garden Street.",
    "I'd like to know | the price of the blue jacket.",
    "Tell me about | the history of the city.",
    "My account number is | seven eight nine four.",
    "What I really need is | a bigger apartment.",
    "Do you have | any vegetarian dishes?",
    "I would like to speak | to a manager please.",
    "Last week I bought | a coffee machine from you.",
    "So the thing is, | I don't remember my username.",
    "Could you check | whether my parcel has arrived?",
    "I want to | renew my subscription for another year.",
    "The meeting is on | Thursday at ten.",
    "Please send it to | my office address.",
    "I'm not sure if | I should take the early train.",
    "Can you explain | how the refund works?",
    "We need a table | for six people tonight.",
]

BACKCHANNEL: list[str] = ["Mm-hm.", "Yeah.", "Okay.", "Right.", "Uh-huh.", "I see."]

# Written after the end-of-turn default was chosen, and evaluated only once, at the end: a
# check that the choice holds on turns nobody tuned against (split "final").
FINAL_COMPLETE: list[str] = [
    "Is the pharmacy open on Sundays?",
    "I lost my keys somewhere in the park.",
    "How far is the airport from the city centre?",
    "Can you spell your last name for me?",
    "The heating in my flat stopped working last night.",
    "Do I need a visa to travel to Canada?",
    "I would like a window seat if possible.",
    "What is the quickest way to learn to swim as an adult?",
    "Please cancel the order I placed yesterday.",
    "How many people can the small meeting room hold?",
    "My son has a fever and a sore throat, should I keep him home from school tomorrow?",
    "Could you read me the last message again?",
]

FINAL_HESITATION: list[str] = [
    "I'm looking for | a gift for my father.",
    "The reason I'm calling is | my bill looks wrong.",
    "Could you tell me | how to get to the station?",
    "We would like to reserve | two seats for the concert.",
    "My date of birth is | the third of March.",
    "I'd prefer | something a bit cheaper.",
    "Is it possible to | pay in two instalments?",
    "I have a question about | the return policy.",
    "The best number to reach me is | five five five, nine eight seven.",
    "Can you remind me | what time the doctor sees me?",
    "I usually take | the bus to work.",
    "What I'd like is | a room facing the garden.",
]

# Said over the agent's answer: these must stop it, the backchannels above must not.
INTERRUPTION: list[str] = [
    "Sorry, stop. Wait a moment please.",
    "Hold on, stop there.",
    "Wait, I have a question.",
]
